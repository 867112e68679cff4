"""The offline metrics of a trained policy on a dataset snapshot's eval split (trainers.evaluate_version runs them
on a fresh version; trainers.canary measures served versions on live feedback instead). Plain functions,
deterministic (greedy decoding, seeded bootstrap); torch is imported only inside the functions that run a model, so
the statistics can be used (by the promotion gate) without the ML extras installed.

How to read each metric:
- **Edit replay** (`edit_replay`, `compare_replay`): for each eval prompt, the normalized Levenshtein distance between
  what the model generates and what the user finally kept (0 identical, 1 nothing in common). Lower is better. The
  per-example `distances` let two systems on the same prompts be compared pairwise: `compare_replay` gives
  candidate minus other, so a negative difference means the candidate lands closer to what users keep.
- **Edited-region replay** (`edited_region_replay`): where the user made a small edit, the whole-text distance
  hardly moves when a candidate learns it (a two-character convention in a 300-character function). This one looks
  only at what the user changed: each changed block of the user's final code, with a few characters of context, is
  searched in the generation (best-aligned substring); `distance` is 1 minus that alignment's similarity, averaged
  over the blocks, 0 when the generation writes every change as the user did. `region_match` is the share of
  examples whose generation holds every changed block exactly: the held-out prompts where the candidate already
  writes what the user kept.
- **Implicit reward accuracy** (`implicit_reward_accuracy`): the reward accuracy of rewards.evaluation for a DPO
  policy, whose implicit reward is `beta * (log p_policy(completion) - log p_reference(completion))`, the reference
  being the base (the same PeftModel with its adapter disabled). 0.5 with margin 0 is what an untrained adapter
  gives.
- **Guardrails** (`degenerate`, `length_shortfall`, and `generate_with_limits`' truncation flag): signs of a policy
  that games its reward, on the same generations: a repetition loop at the end, a completion cut off at the token
  limit, a completion shorter than what the user kept.
- **Parse rate** (`parse_rate`): share of Python texts that `ast.parse` accepts. A completion of a partial file may
  not parse alone; pass prompt + completion when the prompt is the start of the file.
- **Confidence intervals** (`mean_ci`, `paired_difference`): percentile bootstrap. `paired_difference` resamples the
  per-example differences `a - b`, so it compares two systems on the same examples; `significant` says whether the
  interval excludes zero ("better"/"worse" for `a`, given which direction is better), None when it does not.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

from rapidfuzz.distance import Levenshtein

from feedback.syntax import parses
from rewards.evaluation import pairwise_accuracy, preference_baselines

# --- statistics --------------------------------------------------------------------------------------------------


def normalized_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance divided by the longer length: 0 identical, 1 totally different (0 for two empty)."""
    return float(Levenshtein.normalized_distance(a, b))


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), on an already sorted sequence."""
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def _bootstrap_means(values: Sequence[float], resamples: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = len(values)
    return sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples))


def mean_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean with a percentile-bootstrap confidence interval: {mean, low, high, n}. Empty: all None; one value:
    low = high = mean. The same seed gives the same interval."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "low": mean, "high": mean, "n": 1}
    means = _bootstrap_means(values, resamples, seed)
    alpha = 1.0 - confidence
    return {"mean": mean, "low": _quantile(means, alpha / 2), "high": _quantile(means, 1 - alpha / 2), "n": n}


def sign_flip_p_value(diffs: Sequence[float], resamples: int, seed: int) -> tuple[float, str]:
    """Two-sided paired permutation test: under "no difference" each difference is as likely positive as negative.
    Exact enumeration when 2^n <= resamples, Monte Carlo otherwise (p = (1 + hits) / (1 + resamples))."""
    n = len(diffs)
    observed = abs(math.fsum(diffs)) - 1e-12 * max(1.0, abs(math.fsum(diffs)))  # tolerate rounding ties
    magnitudes = [abs(d) for d in diffs]
    if 2**n <= resamples:
        hits = 0
        for mask in range(2**n):
            total = math.fsum(m if mask >> i & 1 else -m for i, m in enumerate(magnitudes))
            hits += abs(total) >= observed
        return hits / 2**n, f"exact sign-flip permutation test, {2**n} sign patterns"
    rng = random.Random(seed + 1)
    hits = sum(
        abs(math.fsum(m if rng.random() < 0.5 else -m for m in magnitudes)) >= observed for _ in range(resamples)
    )
    return (1 + hits) / (1 + resamples), f"sign-flip permutation test, {resamples} resamples"


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Compare two systems scored on the same examples. Sign convention: every number is about `a - b`
    (positive: `a` scored higher than `b`). `significant` is "better" or "worse" for `a` when the bootstrap interval of
    the mean difference excludes zero, None when it does not; "better" means higher when `higher_is_better`, lower
    otherwise (pass False for distances and losses).

    Returns {mean, low, high, n, a_mean, b_mean, significant, p_value, test}: the mean difference and its interval
    (paired bootstrap, resampling examples), and a two-sided sign-flip permutation p-value."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} != {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    ci = mean_ci(diffs, confidence, resamples, seed)
    test = f"paired bootstrap, {resamples} resamples, {confidence:.0%}"
    if n == 0:
        return {**ci, "a_mean": None, "b_mean": None, "significant": None, "p_value": None, "test": test}
    significant = None
    if n > 1 and (ci["low"] > 0 or ci["high"] < 0):
        a_higher = ci["low"] > 0
        significant = "better" if a_higher == higher_is_better else "worse"
    p_value, p_test = sign_flip_p_value(diffs, resamples, seed)
    return {
        **ci,
        "a_mean": math.fsum(float(x) for x in a) / n,
        "b_mean": math.fsum(float(y) for y in b) / n,
        "significant": significant,
        "p_value": p_value,
        "test": f"{test}; p-value: {p_test}",
    }


# --- text checks and baselines -----------------------------------------------------------------------------------


LOOP_MIN_CHARS = 24  # a repeated chunk must cover at least this much of the tail to count as a loop


def degenerate(text: str, repeats: int = 3) -> bool:
    """Whether the text ends in a repetition loop: one chunk repeated `repeats` or more times back to back at the
    end, covering at least LOOP_MIN_CHARS (what a collapsed policy emits until the token limit)."""
    tail = text.rstrip()
    for period in range(1, len(tail) // repeats + 1):
        if period * repeats >= LOOP_MIN_CHARS and tail[-period:] * repeats == tail[-period * repeats :]:
            return True
    return False


def length_shortfall(text: str, kept: str) -> float:
    """How much shorter than what the user kept a generation is: 0 when as long or longer, 1 when empty."""
    want = len(kept.strip())
    return max(0.0, 1.0 - len(text.strip()) / want) if want else 0.0


def parse_rate(texts: Sequence[str]) -> dict[str, Any]:
    """{rate, n}: share of texts that parse as Python (rate None when there are none)."""
    ok = sum(parses(t) for t in texts)
    return {"rate": ok / len(texts) if texts else None, "n": len(texts)}


# --- running models ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _inference(model: Any) -> Iterator[Any]:
    """Eval mode and no autograd for the duration; the model's previous train/eval mode is restored after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return int(pad)


def _with_eos(text: str, eos: str | None) -> str:
    """As TRL's trainers do for standard-format text: append eos unless it is already there."""
    return text if not eos or text.endswith(eos) else text + eos


def _adapter_off(model: Any) -> contextlib.AbstractContextManager[Any]:
    if not hasattr(model, "disable_adapter"):
        raise TypeError(f"{type(model).__name__} has no adapter to disable; pass a peft.PeftModel")
    return model.disable_adapter()


@contextlib.contextmanager
def _use_adapter(model: Any, name: str) -> Iterator[Any]:
    """Another adapter of the same PeftModel, for the duration. PEFT's set_adapter also flips requires_grad, so the
    flags are put back as they were along with the active adapter."""
    if name not in getattr(model, "peft_config", {}):
        raise ValueError(f"the model has no adapter named {name!r}")
    previous = model.active_adapter
    flags = {param_name: p.requires_grad for param_name, p in model.named_parameters()}
    model.set_adapter(name)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for param_name, p in model.named_parameters():
            p.requires_grad_(flags[param_name])


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def split_prompt_completions(
    tokenizer: Any, prompt: str, completions: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """Token ids the way TRL's DPOTrainer builds them for a standard-format example: the prompt tokenized alone, each
    prompt + completion + eos tokenized whole, and the completion taken to start where those diverge (the shortest
    common prefix over all completions, so that a token merged across the boundary goes to the completion).
    prompt_ids + completion_ids is then exactly the tokenized full text."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    fulls = [list(tokenizer(prompt + _with_eos(c, tokenizer.eos_token))["input_ids"]) for c in completions]
    cut = min((_common_prefix_length(prompt_ids, f) for f in fulls), default=len(prompt_ids))
    return prompt_ids[:cut], [f[cut:] for f in fulls]


def _sequence_logps(
    model: Any, pad_id: int, examples: Sequence[tuple[list[int], list[int]]], batch_size: int, max_length: int | None
) -> list[float]:
    """Summed log-probability of the completion tokens of each (prompt_ids, completion_ids), right-padded.
    Truncation keeps the start, like TRL's DPO collator with truncation_mode='keep_start'."""
    import torch

    results: list[float] = []
    device = _device(model)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        seqs = [(p + c)[:max_length] if max_length else p + c for p, c in chunk]
        masks = [([0] * len(p) + [1] * len(c))[: len(s)] for (p, c), s in zip(chunk, seqs, strict=True)]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        completion = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].to(torch.float32)
        targets = input_ids[:, 1:]
        token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        results.extend((token_logps * completion[:, 1:]).sum(dim=-1).tolist())
    return results


def completion_logps(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """Summed log p(completion + eos | prompt) under a causal LM, tokenized as DPOTrainer does
    (`split_prompt_completions`). Log-probs are computed in float32."""
    if len(prompts) != len(completions):
        raise ValueError("prompts and completions must have the same length")
    examples = []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids, (completion_ids,) = split_prompt_completions(tokenizer, prompt, [completion])
        examples.append((prompt_ids, completion_ids))
    with _inference(model):
        return _sequence_logps(model, _pad_id(tokenizer), examples, batch_size, max_length)


def implicit_reward_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    beta: float,
    batch_size: int = 8,
    max_length: int | None = None,
    reference_adapter: str | None = None,
) -> dict[str, Any]:
    """Pairwise accuracy of a DPO policy's implicit reward, beta * (log p_policy - log p_reference), where the
    reference is the same PeftModel with its adapter disabled (no second copy of the base in memory). Each pair is
    tokenized as DPOTrainer does (the prompt/completion boundary shared by chosen and rejected).

    That is DPOTrainer's reference when it wrapped a plain model itself (`peft_config=`). Handed a PeftModel that
    already has an adapter (continuing the production adapter), DPOTrainer instead freezes a copy of that adapter
    as "ref" and uses it as the reference: pass `reference_adapter="ref"` (or the name the starting adapter is
    loaded under) to measure against that.

    Returns {accuracy, mean_margin, ties, n, outcomes, chosen_reward, rejected_reward, baselines}. Ties count half
    here (TRL's logged `rewards/accuracies` counts them as 0), so an untrained adapter scores exactly 0.5, margin 0."""
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError("prompts, chosen and rejected must have the same length")
    examples: list[tuple[list[int], list[int]]] = []
    for prompt, good, bad in zip(prompts, chosen, rejected, strict=True):
        prompt_ids, (good_ids, bad_ids) = split_prompt_completions(tokenizer, prompt, [good, bad])
        examples += [(prompt_ids, good_ids), (prompt_ids, bad_ids)]
    pad_id = _pad_id(tokenizer)
    with _inference(model):
        policy = _sequence_logps(model, pad_id, examples, batch_size, max_length)
        with _adapter_off(model) if reference_adapter is None else _use_adapter(model, reference_adapter):
            reference = _sequence_logps(model, pad_id, examples, batch_size, max_length)
    rewards = [beta * (p - r) for p, r in zip(policy, reference, strict=True)]
    chosen_rewards, rejected_rewards = rewards[0::2], rewards[1::2]
    n = len(chosen_rewards)
    return {
        **pairwise_accuracy(chosen_rewards, rejected_rewards),
        "chosen_reward": math.fsum(chosen_rewards) / n if n else None,
        "rejected_reward": math.fsum(rejected_rewards) / n if n else None,
        "baselines": preference_baselines(chosen, rejected),
    }


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    adapter_disabled: bool = False,
) -> list[str]:
    """Greedy completions, left-padded in batches; only the new tokens, cut at the first eos, special tokens
    skipped. A fresh greedy GenerationConfig is used, so a checkpoint's sampling defaults do not apply.
    `adapter_disabled=True` generates from the base through the same PeftModel."""
    outputs = generate_with_limits(model, tokenizer, prompts, max_new_tokens, batch_size, adapter_disabled)
    return [text for text, _ in outputs]


def generate_with_limits(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    adapter_disabled: bool = False,
) -> list[tuple[str, bool]]:
    """`generate`, with whether each completion ran to `max_new_tokens` without an eos (truncated)."""
    from transformers import GenerationConfig

    pad_id = _pad_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos_id
    )
    outputs: list[tuple[str, bool]] = []
    base = _adapter_off(model) if adapter_disabled else contextlib.nullcontext()
    with _inference(model), base:
        device = _device(model)
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                list(prompts[start : start + batch_size]), padding=True, padding_side="left", return_tensors="pt"
            ).to(device)
            generated = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=config
            )
            for row in generated[:, batch["input_ids"].shape[1] :].tolist():
                stopped = eos_id is not None and eos_id in row
                if stopped:
                    row = row[: row.index(eos_id)]
                truncated = not stopped and len(row) >= max_new_tokens
                outputs.append((tokenizer.decode(row, skip_special_tokens=True), truncated))
    return outputs


# --- edit replay -------------------------------------------------------------------------------------------------


def edit_replay(generations: Sequence[str], finals: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """How far each generation is from what the user finally kept. Returns {mean, low, high, n, exact_match,
    distances}: the mean normalized edit distance with its bootstrap interval, the share of exact matches, and the
    per-example distances (keep them: `compare_replay` pairs them with another system's)."""
    if len(generations) != len(finals):
        raise ValueError(f"generations and finals differ in length: {len(generations)} != {len(finals)}")
    distances = [normalized_edit_distance(g, f) for g, f in zip(generations, finals, strict=True)]
    exact = sum(d == 0.0 for d in distances) / len(distances) if distances else None
    return {**mean_ci(distances, seed=seed), "exact_match": exact, "distances": distances}


def edited_windows(original: str, final: str, context: int = 8) -> list[str]:
    """The parts of `final` that the user changed from `original`, each with `context` characters either side
    (overlapping windows merged). Empty when nothing changed."""
    spans: list[list[int]] = []
    for op in Levenshtein.opcodes(original, final):
        if op.tag == "equal":
            continue
        start, end = max(0, op.dest_start - context), min(len(final), op.dest_end + context)
        if spans and start <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [final[start:end] for start, end in spans]


def edited_region_replay(
    generations: Sequence[str], finals: Sequence[str], originals: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """Edit replay over what the users changed (see the module docstring). Returns {mean, low, high, n,
    region_match, distances}: the mean region distance with its bootstrap interval, the share of examples whose
    generation holds every changed block, and the per-example distances. Examples with no change are left out."""
    from rapidfuzz import fuzz

    if not len(generations) == len(finals) == len(originals):
        raise ValueError("generations, finals and originals must have the same length")
    distances: list[float] = []
    for generation, final, original in zip(generations, finals, originals, strict=True):
        windows = edited_windows(original, final)
        if windows:
            scores = [fuzz.partial_ratio(w, generation) / 100 for w in windows]
            distances.append(1.0 - math.fsum(scores) / len(scores))
    matched = sum(d == 0.0 for d in distances) / len(distances) if distances else None
    return {**mean_ci(distances, seed=seed), "region_match": matched, "distances": distances}


def compare_replay(candidate: dict[str, Any], others: dict[str, dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """The candidate's edit replay against other systems on the same prompts (e.g. "base", "production"):
    {name: paired_difference(candidate - other)}. Lower distance is better, so a negative mean is an improvement
    and `significant == "worse"` means the candidate is farther from what users keep beyond noise."""
    return {
        name: paired_difference(candidate["distances"], other["distances"], seed=seed, higher_is_better=False)
        for name, other in others.items()
    }
