"""Evaluating a freshly trained policy version on its snapshot's eval split, before it is registered; the figures are
stored on the version (and in its manifest). trainers.metrics holds the metrics themselves; a reward model is
evaluated by rewards.evaluation."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainers import metrics


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    pairs: list[dict[str, Any]],
    replay: list[dict[str, Any]],
    *,
    beta: float,
    max_new_tokens: int,
    production: tuple[str, Path] | None,
    score: Callable[[Sequence[str], Sequence[str]], list[float]] | None = None,
    upstream: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Implicit-reward accuracy on held-out pairs; edit replay on held-out prompts (what the user finally kept)
    against the base and the production adapter, with intervals; parse rate of the Python generations; the
    promotion gate's guardrails (empty, degenerate, truncated, length shortfall). Every per-example value is kept
    for every system (`per_example`: the candidate's unprefixed, `base_...`, `production_...`), so the gate pairs
    them on the same examples.
    `replay` rows: prompt, completion (the user's final code), editloop_source_key, editloop_python.
    `score(prompts, completions)`: a reward model (online RL's), which then also scores every system's greedy
    generations on the held-out prompts (`reward_model_score`, candidate minus the others paired per prompt).
    `upstream`: the upstream's logged completion per replay row (by source key), where one exists; the candidate is
    replayed against it on those rows (`edit_replay_vs_upstream`), so a version says whether it beats the rented
    model, not only our base."""
    out: dict[str, Any] = {"examples": {"pairs": len(pairs), "replay": len(replay)}}
    if pairs:
        out["implicit_reward"] = metrics.implicit_reward_accuracy(
            model,
            tokenizer,
            [p["prompt"] for p in pairs],
            [p["chosen"] for p in pairs],
            [p["rejected"] for p in pairs],
            beta=beta,
        )
    if not replay:
        return out
    prompts = [r["prompt"] for r in replay]
    finals = [r["completion"] for r in replay]
    outputs = {
        "candidate": metrics.generate_with_limits(model, tokenizer, prompts, max_new_tokens=max_new_tokens),
        "base": metrics.generate_with_limits(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, adapter_disabled=True
        ),
    }
    if production is not None:
        name, path = production
        # The production adapter joins the same model under its own name: no second copy of the base.
        model.load_adapter(str(path), adapter_name="production")
        try:
            model.set_adapter("production")
            outputs["production"] = metrics.generate_with_limits(
                model, tokenizer, prompts, max_new_tokens=max_new_tokens
            )
        finally:
            model.set_adapter("default")
            model.delete_adapter("production")
        out["production_version"] = name
    out["max_new_tokens"] = max_new_tokens
    generated = {system: [text for text, _ in pairs] for system, pairs in outputs.items()}
    guards = {system: _guardrails(pairs, finals) for system, pairs in outputs.items()}
    out["guardrails"] = {
        system: {name: sum(values) / len(values) for name, values in g.items()} for system, g in guards.items()
    }
    scored = {system: metrics.edit_replay(texts, finals) for system, texts in generated.items()}
    out["edit_replay"] = {system: {k: v for k, v in s.items() if k != "distances"} for system, s in scored.items()}
    out["edit_replay_vs"] = metrics.compare_replay(
        scored["candidate"], {k: v for k, v in scored.items() if k != "candidate"}
    )
    upstream = upstream or {}
    logged = [i for i, r in enumerate(replay) if r["editloop_source_key"] in upstream]
    if logged:
        rented = [upstream[replay[i]["editloop_source_key"]] for i in logged]
        kept = [finals[i] for i in logged]
        ours = metrics.edit_replay([generated["candidate"][i] for i in logged], kept)
        theirs = metrics.edit_replay(rented, kept)
        out["edit_replay_upstream"] = {k: v for k, v in theirs.items() if k != "distances"}
        out["edit_replay_vs_upstream"] = {
            "n": len(logged),
            **metrics.compare_replay(ours, {"upstream": theirs})["upstream"],
        }
    edited = [i for i, r in enumerate(replay) if r.get("editloop_original") is not None]
    regions: dict[str, dict[int, float]] = {}  # system -> example index -> its edited-region distance
    if edited:  # small edits: what the user changed, where the whole-text distance barely moves
        originals = [replay[i]["editloop_original"] for i in edited]
        out["edit_region"] = {}
        for system, texts in generated.items():
            region = metrics.edited_region_replay([texts[i] for i in edited], [finals[i] for i in edited], originals)
            out["edit_region"][system] = {k: v for k, v in region.items() if k != "distances"}
            changed = [i for i in edited if metrics.edited_windows(replay[i]["editloop_original"], finals[i])]
            regions[system] = dict(zip(changed, region["distances"], strict=True))
    python = [i for i, r in enumerate(replay) if r.get("editloop_python")]
    flags = {system: [metrics.parses(texts[i]) for i in python] for system, texts in generated.items()}
    out["parse_rate"] = {system: {"rate": sum(f) / len(f) if f else None, "n": len(f)} for system, f in flags.items()}
    per_example = []
    for i, row in enumerate(replay):
        entry: dict[str, Any] = {"key": row["editloop_source_key"]}
        for system, s in scored.items():
            prefix = "" if system == "candidate" else f"{system}_"
            entry[f"{prefix}distance"] = s["distances"][i]
            if i in regions.get(system, {}):
                entry[f"{prefix}region_distance"] = regions[system][i]
            for name, values in guards[system].items():
                entry[f"{prefix}{name}"] = values[i]
            if row.get("editloop_python"):
                entry[f"{prefix}parses"] = 1.0 if metrics.parses(generated[system][i]) else 0.0
        if row["editloop_source_key"] in (upstream or {}):
            entry["upstream_distance"] = metrics.normalized_edit_distance(
                upstream[row["editloop_source_key"]], finals[i]
            )
        per_example.append(entry)
    if score is not None:
        rewarded = {system: [float(x) for x in score(prompts, texts)] for system, texts in generated.items()}
        out["reward_model_score"] = {system: metrics.mean_ci(values) for system, values in rewarded.items()}
        out["reward_model_score_vs"] = {
            system: metrics.paired_difference(rewarded["candidate"], values)
            for system, values in rewarded.items()
            if system != "candidate"
        }
        for i, entry in enumerate(per_example):
            for system, values in rewarded.items():
                entry[f"{'' if system == 'candidate' else system + '_'}reward_score"] = values[i]
    out["per_example"] = per_example
    out["samples"] = [
        {"prompt": prompts[i], "candidate": generated["candidate"][i], "final": finals[i]}
        for i in range(min(3, len(prompts)))
    ]
    return out


def _guardrails(outputs: list[tuple[str, bool]], finals: list[str]) -> dict[str, list[float]]:
    """Per example, the signs of a policy gaming its reward (trainers.gate gates them): empty output, a repetition
    loop, a cut at the token limit, and how much shorter than what the user kept."""
    return {
        "empty": [0.0 if text.strip() else 1.0 for text, _ in outputs],
        "degenerate": [1.0 if metrics.degenerate(text) else 0.0 for text, _ in outputs],
        "truncated": [1.0 if truncated else 0.0 for _, truncated in outputs],
        "shortfall": [metrics.length_shortfall(text, final) for (text, _), final in zip(outputs, finals, strict=True)],
    }
