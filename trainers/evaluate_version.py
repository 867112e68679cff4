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
) -> dict[str, Any]:
    """Implicit-reward accuracy on held-out pairs; edit replay on held-out prompts (what the user finally kept)
    against the base and the production adapter, with intervals; parse rate of the Python generations.
    `replay` rows: prompt, completion (the user's final code), editloop_source_key, editloop_python.
    `score(prompts, completions)`: a reward model (online RL's), which then also scores every system's greedy
    generations on the held-out prompts (`reward_model_score`, candidate minus the others paired per prompt)."""
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
    generated = {
        "candidate": metrics.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens),
        "base": metrics.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, adapter_disabled=True),
    }
    if production is not None:
        name, path = production
        # The production adapter joins the same model under its own name: no second copy of the base.
        model.load_adapter(str(path), adapter_name="production")
        try:
            model.set_adapter("production")
            generated["production"] = metrics.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        finally:
            model.set_adapter("default")
            model.delete_adapter("production")
        out["production_version"] = name
    scored = {system: metrics.edit_replay(texts, finals) for system, texts in generated.items()}
    out["edit_replay"] = {system: {k: v for k, v in s.items() if k != "distances"} for system, s in scored.items()}
    out["edit_replay_vs"] = metrics.compare_replay(
        scored["candidate"], {k: v for k, v in scored.items() if k != "candidate"}
    )
    edited = [i for i, r in enumerate(replay) if r.get("editloop_original") is not None]
    if edited:  # small edits: what the user changed, where the whole-text distance barely moves
        originals = [replay[i]["editloop_original"] for i in edited]
        out["edit_region"] = {
            system: {
                k: v
                for k, v in metrics.edited_region_replay(
                    [texts[i] for i in edited], [finals[i] for i in edited], originals
                ).items()
                if k != "distances"
            }
            for system, texts in generated.items()
        }
    python = [i for i, r in enumerate(replay) if r.get("editloop_python")]
    flags = {system: [metrics.parses(texts[i]) for i in python] for system, texts in generated.items()}
    out["parse_rate"] = {system: {"rate": sum(f) / len(f) if f else None, "n": len(f)} for system, f in flags.items()}
    per_example = []
    for i, row in enumerate(replay):
        entry: dict[str, Any] = {"key": row["editloop_source_key"]}
        for system, s in scored.items():
            prefix = "" if system == "candidate" else f"{system}_"
            entry[f"{prefix}distance"] = s["distances"][i]
            if row.get("editloop_python"):
                entry[f"{prefix}parses"] = 1.0 if metrics.parses(generated[system][i]) else 0.0
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
