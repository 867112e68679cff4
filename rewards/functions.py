"""Reward functions in TRL's shape, `f(prompts, completions, **kwargs) -> list[float | None]`, for online RL.

- `parses`: 1.0 when the code parses as Python, 0.0 when it cannot; None (not scored) for rows that are not Python.
  A completion cut off at the token limit is judged as a prefix: it scores 1.0 if some continuation could still
  make it valid (`codeop`: "incomplete" is not "invalid"), so the policy is not pushed toward short answers.
- `LengthGuard`: 0 up to a token budget, falling linearly to -1 at twice it; -1 for a completion cut off before
  its eos. It keeps a reward model that likes longer text from buying score with length.
- `ParseGated`: wraps a reward so that code which does not parse earns the batch's lowest score of it.
- `RewardModelScore`: the reward model's logit for prompt + completion + eos, the text exactly as RewardTrainer saw
  it in training (TRL's own scoring of a reward model sends no eos).

Each callable has a `__name__`, which TRL uses to log its mean (`rewards/<name>/mean`) apart from the others.
torch is imported only by `RewardModelScore` when it scores."""

import codeop
import warnings
from collections.abc import Sequence
from typing import Any

from feedback.syntax import parses


def _valid(source: str, truncated: bool) -> bool:
    if not truncated:
        return parses(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not a failure
        try:
            # None: a valid but incomplete prefix; a code object: complete; SyntaxError: invalid whatever follows.
            codeop.compile_command(source, symbol="exec")
            return True
        except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
            return False


def _truncated(ids: Sequence[int] | None, eos_id: int | None) -> bool:
    """A completion that did not end with eos was cut off by the token limit (TRL keeps the eos in the ids)."""
    return bool(ids) and eos_id is not None and ids[-1] != eos_id  # type: ignore[index]


def code_parses(prompt: str, completion: str, truncated: bool = False) -> bool:
    """prompt + completion parses (a completion of the start of a file), or the completion alone does (a chat
    answer, whose prompt is not code). `truncated`: judge it as a prefix that could still be completed."""
    return _valid(prompt + completion, truncated) or _valid(completion, truncated)


def reward_scores(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 16, max_length: int = 512
) -> list[float]:
    """Scalar scores from a sequence-classification model with one label (or a PeftModel around one). Each text is
    scored as RewardTrainer saw it in training: the full text (prompt + completion) followed by the eos token,
    right-padded. Texts longer than `max_length` tokens are cut to their first `max_length` (RewardTrainer drops such
    pairs instead), so their score is the score of a prefix.

    The model pools the last non-pad token, so it needs `config.pad_token_id`; it is set from the tokenizer when
    missing. The model's train/eval mode is restored afterwards."""
    import torch

    config = model.config
    if getattr(config, "num_labels", 1) != 1:
        raise ValueError(f"a reward model has num_labels=1, this one has {config.num_labels}")
    if config.pad_token_id is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token")
        config.pad_token_id = int(pad)
    eos = tokenizer.eos_token  # appended unless already there, as TRL's trainers do for standard-format text
    full = [t if not eos or t.endswith(eos) else t + eos for t in texts]
    scores: list[float] = []
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(full), batch_size):
                batch = tokenizer(
                    full[start : start + batch_size],
                    padding=True,
                    padding_side="right",
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                scores.extend(logits.reshape(-1).to(torch.float32).tolist())
    finally:
        model.train(was_training)
    return scores


class Parses:
    """Parse validity. Rows whose `python` column (passed by TRL from the dataset) is False are not scored (None);
    without the column every row is taken for Python."""

    __name__ = "parses"

    def __init__(self, eos_id: int | None) -> None:
        self.eos_id = eos_id

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
        python: Sequence[bool | None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        out: list[float | None] = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            if python is not None and python[i] is False:
                out.append(None)
                continue
            cut = _truncated(completion_ids[i] if completion_ids is not None else None, self.eos_id)
            out.append(1.0 if code_parses(prompt, completion, cut) else 0.0)
        return out


class LengthGuard:
    """0 for completions of at most `target` tokens, then linearly down to -1 at 2 x target; -1 when cut off."""

    __name__ = "length"

    def __init__(self, target: int, eos_id: int | None) -> None:
        if target < 1:
            raise ValueError("target must be at least 1 token")
        self.target, self.eos_id = target, eos_id

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        if completion_ids is None:
            raise ValueError("the length guard needs completion_ids (TRL passes them)")
        out = []
        for ids in completion_ids:
            if _truncated(ids, self.eos_id):
                out.append(-1.0)
                continue
            length = len(ids) - (1 if ids and ids[-1] == self.eos_id else 0)
            out.append(-min(1.0, max(0, length - self.target) / self.target))
        return out


class ParseGated:
    """A reward (the reward model's score) that only code which parses can earn: a completion that does not parse
    gets the lowest score of its batch, so no broken completion outranks a parsing one on style. A weighted parse
    reward alone cannot promise that: reward-model logits spread wider than any fixed weight, and online RL then
    trades syntax for style. Rows that are not Python (parse verdict None) keep their score."""

    def __init__(self, reward: Any, parse: Parses) -> None:
        self.reward, self.parse = reward, parse
        self.__name__ = getattr(reward, "__name__", "reward_model")  # logged under the gated reward's own name

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float | None]:
        scores = self.reward(prompts, completions, **kwargs)
        verdicts = self.parse(prompts, completions, **kwargs)
        floor = min((s for s in scores if s is not None), default=None)
        return [floor if v == 0.0 and s is not None else s for s, v in zip(scores, verdicts, strict=True)]


class RewardModelScore:
    """Scores prompt + completion + eos with a one-logit sequence classifier (a reward model version merged into
    its base, or a PeftModel around it), right-padded in batches, without gradients."""

    __name__ = "reward_model"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, max_length: int = 1024) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def score(self, texts: Sequence[str]) -> list[float]:
        return reward_scores(self.model, self.tokenizer, texts, self.batch_size, self.max_length)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float]:
        return self.score([p + c for p, c in zip(prompts, completions, strict=True)])


def load_reward_model(base_model: str, base_revision: str | None, adapter_dir: str, tokenizer: Any) -> Any:
    """A reward model version (a SEQ_CLS LoRA with its score head) on the base, merged into a plain classifier:
    scoring then costs what the base costs, with no LoRA overhead per call."""
    from peft import PeftModel

    from ml.loading import load_model

    model = load_model(base_model, base_revision, head="reward")
    model.config.pad_token_id = tokenizer.pad_token_id
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    for parameter in merged.parameters():
        parameter.requires_grad_(False)
    return merged.eval()
