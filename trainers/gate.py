"""The promotion gate: is a candidate worse than production beyond noise?

Pure Python (the API process decides promotions and never imports torch). Two measures from each version's stored
evaluation, both on held-out prompts: the edit replay distance (lower is better) and, for Python, the share of
generations that parse (higher is better). The gate compares them with a percentile bootstrap of the difference
(candidate minus production): paired by eval example when both versions were evaluated on the same examples, over
independent samples otherwise. "Worse beyond noise" means the whole 95% interval lies on the worse side."""

import random
from collections.abc import Sequence
from typing import Any

from trainers.metrics import mean_ci

RESAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_difference(
    a: Sequence[float], b: Sequence[float], paired: bool, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """mean(a) - mean(b) with a percentile bootstrap interval."""
    if not a or not b:
        return {"difference": None, "low": None, "high": None, "n": [len(a), len(b)], "paired": paired}
    diff = sum(a) / len(a) - sum(b) / len(b)
    if paired:  # the bootstrap of the per-example differences' mean
        ci = mean_ci([x - y for x, y in zip(a, b, strict=True)], CONFIDENCE, resamples, seed)
        return {"difference": diff, "low": ci["low"], "high": ci["high"], "n": [len(a), len(b)], "paired": True}
    rng = random.Random(seed)
    samples = []
    for _ in range(resamples):
        ra = [a[rng.randrange(len(a))] for _ in a]
        rb = [b[rng.randrange(len(b))] for _ in b]
        samples.append(sum(ra) / len(ra) - sum(rb) / len(rb))
    samples.sort()
    tail = (1 - CONFIDENCE) / 2
    low = samples[int(tail * (resamples - 1))]
    high = samples[int((1 - tail) * (resamples - 1))]
    return {"difference": diff, "low": low, "high": high, "n": [len(a), len(b)], "paired": paired}


def _per_example(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = (metrics.get("eval") or {}).get("per_example") or []
    return {row["key"]: row for row in rows}


def _compare(
    cand: dict[str, dict[str, Any]], prod: dict[str, dict[str, Any]], field: str, worse_if: str
) -> dict[str, Any]:
    shared = sorted(
        k for k in set(cand) & set(prod) if cand[k].get(field) is not None and prod[k].get(field) is not None
    )
    if len(shared) >= 5:
        a = [float(cand[k][field]) for k in shared]
        b = [float(prod[k][field]) for k in shared]
        result = bootstrap_difference(a, b, paired=True)
    else:
        a = [float(r[field]) for r in cand.values() if r.get(field) is not None]
        b = [float(r[field]) for r in prod.values() if r.get(field) is not None]
        result = bootstrap_difference(a, b, paired=False)
    if result["difference"] is None:
        result["worse"] = None
    elif worse_if == "higher":
        result["worse"] = result["low"] > 0
    else:
        result["worse"] = result["high"] < 0
    return result


def check(candidate: dict[str, Any], production: dict[str, Any] | None) -> dict[str, Any]:
    """The gate's verdict: {"passed": bool, "reasons": [...], "edit_distance": ..., "parse_rate": ..., "test": ...}."""
    verdict: dict[str, Any] = {
        "test": f"percentile bootstrap of candidate - production, {RESAMPLES} resamples, {CONFIDENCE:.0%} interval;"
        " paired by eval example when both were evaluated on the same examples",
        "reasons": [],
    }
    cand = _per_example(candidate)
    if not cand:
        verdict["passed"] = False
        verdict["reasons"].append("the candidate has no evaluation to compare (eval_examples=0 or no eval split)")
        return verdict
    if production is None:
        verdict["passed"] = True
        verdict["reasons"].append("no production version to compare against")
        return verdict
    prod = _per_example(production)
    if not prod:
        verdict["passed"] = True
        verdict["reasons"].append("production has no evaluation to compare against")
        return verdict
    verdict["edit_distance"] = _compare(cand, prod, "distance", worse_if="higher")
    verdict["parse_rate"] = _compare(cand, prod, "parses", worse_if="lower")
    if verdict["edit_distance"]["worse"]:
        verdict["reasons"].append("edit replay distance is higher than production's beyond noise")
    if verdict["parse_rate"]["worse"]:
        verdict["reasons"].append("parse rate is lower than production's beyond noise")
    verdict["passed"] = not verdict["reasons"]
    if verdict["passed"]:
        verdict["reasons"].append("not worse than production beyond noise")
    return verdict
