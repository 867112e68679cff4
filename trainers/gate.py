"""The promotion gate: is a candidate worse than production, or than the base model, beyond noise?

One comparison, on the same prompts. The candidate's evaluation (trainers.evaluate_version) generated, for each of
its snapshot's held-out examples, with the candidate, with the base (adapter off) and with the production adapter
of the time; the gate pairs those per example and bootstraps each difference (candidate minus other). Measures,
each "higher is worse" per example except the parse rate:

- `edit_distance`: the edit replay distance to what the user kept: over the regions the user changed, where the
  example is an edit of a model's code (the whole text would favour the model that wrote that code: a candidate that
  learnt a two-character convention but words the rest differently is farther from the kept text than the base
  whose code was edited, and was refused for it), over the whole text otherwise;
- guardrails against reward hacking, on the same generations: `parse_rate` (Python that parses), `empty` (nothing
  but whitespace), `degenerate` (the output ends in a loop of one repeated chunk), `truncated` (generation stopped
  at the token limit, not at eos) and `length_shortfall` (how much shorter than what the user kept: a policy can
  learn to say less).

"Worse beyond noise" means the whole 95% interval of the difference lies beyond the measure's tolerance on the
worse side (tolerances are project settings, `model.gate`; None turns a guardrail off), and an exact sign-flip
permutation test of the same differences agrees (p < 0.05). The second test is for small evaluations: with four
examples all worse, the bootstrap's interval lies above zero, though a coin gives four of a kind one time in eight;
the sign-flip test calls nothing worse on fewer than six examples. A candidate must not be worse than the base on
any measure, nor than production. When production has changed since the candidate was evaluated, production's own
evaluation stands in if it covers every one of the candidate's examples (the same held-out generations, greedy, so
the same outputs); otherwise the gate refuses and says how to re-evaluate. It never compares different prompts.
Pure Python: the API process decides promotions and never imports torch."""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainers.metrics import mean_ci, sign_flip_p_value

RESAMPLES = 2000
CONFIDENCE = 0.95
# name -> (per-example field, True when a higher value is worse)
MEASURES: dict[str, tuple[str, bool]] = {
    "edit_distance": ("distance", True),
    "parse_rate": ("parses", False),
    "empty": ("empty", True),
    "degenerate": ("degenerate", True),
    "truncated": ("truncated", True),
    "length_shortfall": ("shortfall", True),
}
REGION_FIELD = "region_distance"  # per example, the edited-region replay distance, preferred to `distance`
# A shortfall of a few percent is wording (camelCase names are shorter than snake_case); the guard is for a policy
# that learnt to say much less.
DEFAULT_TOLERANCES: dict[str, float | None] = {name: 0.0 for name in MEASURES}
DEFAULT_TOLERANCES["length_shortfall"] = 0.05
WORDS = {
    "edit_distance": "edit replay distance is higher",
    "parse_rate": "parse rate is lower",
    "empty": "more outputs are empty",
    "degenerate": "more outputs are degenerate (a repetition loop)",
    "truncated": "more outputs run to the token limit",
    "length_shortfall": "outputs fall shorter of what users kept",
}


@dataclass(frozen=True)
class Evaluated:
    """What the gate needs of a version: its name, stored metrics, and the snapshot and token limit they used."""

    name: str
    metrics: Mapping[str, Any]
    snapshot_id: int | None = None
    max_new_tokens: int | None = None


def _rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((metrics.get("eval") or {}).get("per_example") or [])


def _compare(a: list[float], b: list[float], higher_is_worse: bool, tolerance: float) -> dict[str, Any]:
    """candidate - other, paired per example, with a percentile bootstrap interval of the mean difference."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    ci = mean_ci(diffs, CONFIDENCE, RESAMPLES, seed=0)
    out: dict[str, Any] = {
        "n": ci["n"],
        "candidate": sum(a) / len(a) if a else None,
        "other": sum(b) / len(b) if b else None,
        "difference": ci["mean"],
        "low": ci["low"],
        "high": ci["high"],
        "paired": True,
        "tolerance": tolerance,
    }
    if ci["mean"] is None:
        out["worse"] = None
        return out
    beyond = ci["low"] > tolerance if higher_is_worse else ci["high"] < -tolerance
    shifted = [d - tolerance if higher_is_worse else d + tolerance for d in diffs]
    out["p_value"], _ = sign_flip_p_value(shifted, RESAMPLES, seed=0)
    out["worse"] = beyond and out["p_value"] < 1 - CONFIDENCE
    return out


def _against(
    rows: list[dict[str, Any]], prefix: str, other_rows: dict[str, dict[str, Any]] | None, tolerances: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Each measure of the candidate's rows against another system: its `prefix`ed fields in the same rows, or,
    with `other_rows` (key -> row), that system's own evaluation of the same examples."""
    out: dict[str, dict[str, Any]] = {}
    for name, (field, higher_is_worse) in MEASURES.items():
        tolerance = tolerances.get(name, DEFAULT_TOLERANCES[name])
        if tolerance is None:
            continue
        fields = (REGION_FIELD, field) if name == "edit_distance" else (field,)
        a: list[float] = []
        b: list[float] = []
        for row in rows:
            other = row if other_rows is None else other_rows[row["key"]]
            for f in fields:  # the first that both systems have for this example
                theirs = other.get(prefix + f if other_rows is None else f)
                if row.get(f) is not None and theirs is not None:
                    a.append(float(row[f]))
                    b.append(float(theirs))
                    break
        if a:
            out[name] = _compare(a, b, higher_is_worse, float(tolerance))
    return out


def _examples(candidate: Evaluated, rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = "\n".join(sorted(str(r["key"]) for r in rows))
    return {
        "snapshot_id": candidate.snapshot_id,
        "split": "eval",
        "n": len(rows),
        "keys_sha256": hashlib.sha256(keys.encode()).hexdigest(),
    }


def _production_source(
    candidate: Evaluated, rows: list[dict[str, Any]], production: Evaluated
) -> tuple[str, dict[str, dict[str, Any]] | None] | str:
    """Where production's generations on the candidate's examples come from: ("candidate's evaluation", None) or
    ("<vX>'s own evaluation", key -> row); a string says why there are none."""
    evaluated_against = (candidate.metrics.get("eval") or {}).get("production_version")
    if evaluated_against == production.name and any("production_distance" in r for r in rows):
        return f"{candidate.name}'s evaluation", None
    theirs = {r["key"]: r for r in _rows(production.metrics)}
    same_limit = candidate.max_new_tokens is None or candidate.max_new_tokens == production.max_new_tokens
    if same_limit and all(r["key"] in theirs for r in rows):
        return f"{production.name}'s own evaluation of the same examples", theirs
    was = f"against {evaluated_against}" if evaluated_against else "with no production version"
    return (
        f"production is {production.name}, but {candidate.name} was evaluated {was} and {production.name}'s own"
        f" evaluation does not cover {candidate.name}'s eval examples; re-evaluate:"
        f" editloop adapters evaluate {candidate.name}"
    )


def check(
    candidate: Evaluated, production: Evaluated | None, tolerances: Mapping[str, float | None] | None = None
) -> dict[str, Any]:
    """The gate's verdict: {passed, reasons, examples, against: {base: {...}, production: {...}}, test}. Each entry
    of `against` names its source and holds one paired comparison per measure (n, means, difference, interval,
    tolerance, worse)."""
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    verdict: dict[str, Any] = {
        "test": f"paired by eval example: percentile bootstrap of candidate - other, {RESAMPLES} resamples,"
        f" {CONFIDENCE:.0%} interval; worse when the whole interval lies beyond the tolerance",
        "tolerances": tolerances,
        "reasons": [],
        "against": {},
    }
    rows = [r for r in _rows(candidate.metrics) if r.get("distance") is not None]
    if not rows:
        verdict["passed"] = False
        verdict["reasons"].append("the candidate has no evaluation to compare (eval_examples=0 or no eval split)")
        return verdict
    verdict["examples"] = _examples(candidate, rows)
    if any("base_distance" not in r for r in rows):
        verdict["reasons"].append(
            f"{candidate.name}'s evaluation has no base generations to compare with; re-evaluate:"
            f" editloop adapters evaluate {candidate.name}"
        )
    else:
        verdict["against"]["base"] = {
            "version": "base",
            "source": f"{candidate.name}'s evaluation",
            "measures": _against(rows, "base_", None, tolerances),
        }
    if production is not None and production.name != candidate.name:
        source = _production_source(candidate, rows, production)
        if isinstance(source, str):
            verdict["reasons"].append(source)
        else:
            verdict["against"]["production"] = {
                "version": production.name,
                "source": source[0],
                "measures": _against(rows, "production_", source[1], tolerances),
            }
    for result in verdict["against"].values():
        for name, comparison in result["measures"].items():
            if comparison["worse"]:
                verdict["reasons"].append(f"{WORDS[name]} than {result['version']}'s beyond noise")
    verdict["passed"] = not verdict["reasons"]
    if verdict["passed"]:
        compared = " and ".join(r["version"] for r in verdict["against"].values())
        verdict["reasons"].append(f"not worse than {compared} beyond noise (n={len(rows)}, paired)")
    return verdict


def summary(verdict: Mapping[str, Any]) -> str:
    """One line per comparison for a reader: `vs base: edit_distance -0.041 [-0.07, -0.01] ...`."""
    lines = []
    for result in (verdict.get("against") or {}).values():
        parts = []
        for name, c in result["measures"].items():
            if c.get("difference") is None:
                continue
            flag = " WORSE" if c["worse"] else ""
            parts.append(f"{name} {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]{flag}")
        n = max((c["n"] for c in result["measures"].values()), default=0)
        lines.append(f"vs {result['version']} (n={n}): " + ", ".join(parts))
    return "\n".join(lines)
