"""Evaluating a reward model on held-out preference pairs, and the pairwise accuracy that a DPO policy's implicit
reward (trainers.metrics) is read with too.

- **Reward accuracy** (`reward_accuracy`): share of held-out pairs where the reward model scores the chosen text above
  the rejected one (ties count half), and the mean score margin. Read it against the baselines: on edit-feedback
  data "the longer one wins" alone can be well above 0.5, and a reward model that does not beat it has likely
  learned length.
- **Baselines** (`preference_baselines`): the accuracy of "the longer text wins" and "the shorter text wins".
"""

import math
from collections.abc import Sequence
from typing import Any

from rewards.functions import reward_scores


def _pair_outcome(chosen: float, rejected: float) -> float:
    return 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0


def preference_baselines(chosen: Sequence[str], rejected: Sequence[str]) -> dict[str, Any]:
    """Accuracy of the rules "the longer text wins" and "the shorter text wins" (characters; ties count half)."""
    if len(chosen) != len(rejected):
        raise ValueError(f"chosen and rejected differ in length: {len(chosen)} != {len(rejected)}")
    n = len(chosen)
    if n == 0:
        return {"longer_wins": None, "shorter_wins": None, "n": 0}
    longer = math.fsum(_pair_outcome(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)) / n
    shorter = math.fsum(_pair_outcome(len(r), len(c)) for c, r in zip(chosen, rejected, strict=True)) / n
    return {"longer_wins": longer, "shorter_wins": shorter, "n": n}


def pairwise_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> dict[str, Any]:
    """{accuracy, mean_margin, ties, n, outcomes} of scores given to the chosen and the rejected side of each pair:
    ties count half; margin = chosen - rejected; `outcomes` per pair (1, 0.5, 0)."""
    outcomes = [_pair_outcome(c, r) for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    margins = [c - r for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    n = len(outcomes)
    return {
        "accuracy": math.fsum(outcomes) / n if n else None,
        "mean_margin": math.fsum(margins) / n if n else None,
        "ties": sum(o == 0.5 for o in outcomes),
        "n": n,
        "outcomes": outcomes,
    }


def reward_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str] | None,
    chosen: Sequence[str],
    rejected: Sequence[str],
    batch_size: int = 16,
    max_length: int = 512,
) -> dict[str, Any]:
    """Pairwise accuracy of a reward model on held-out pairs. `prompts` None means chosen/rejected are full texts
    (implicit-prompt format); otherwise each side is scored as prompt + completion, as RewardTrainer concatenates.

    Returns {accuracy, mean_margin, ties, n, outcomes, baselines}: accuracy with ties counted half; margin =
    score(chosen) - score(rejected); `outcomes` per pair (1, 0.5, 0) for `paired_difference` between two reward models;
    `baselines` from `preference_baselines` on the completions."""
    if len(chosen) != len(rejected) or (prompts is not None and len(prompts) != len(chosen)):
        raise ValueError("prompts, chosen and rejected must have the same length")
    prefix = list(prompts) if prompts is not None else [""] * len(chosen)
    n = len(chosen)
    scores = reward_scores(
        model,
        tokenizer,
        [p + c for p, c in zip(prefix, chosen, strict=True)] + [p + r for p, r in zip(prefix, rejected, strict=True)],
        batch_size=batch_size,
        max_length=max_length,
    )
    return {**pairwise_accuracy(scores[:n], scores[n:]), "baselines": preference_baselines(chosen, rejected)}


def evaluate_reward_model(model: Any, tokenizer: Any, pairs: list[dict[str, str]]) -> dict[str, Any]:
    """A freshly trained reward model's held-out preference accuracy, beside "longer wins" / "shorter wins"; stored
    on the version before it is registered."""
    if not pairs:
        return {"examples": 0}
    result = reward_accuracy(
        model, tokenizer, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs]
    )
    return {"examples": len(pairs), "reward_accuracy": result}
