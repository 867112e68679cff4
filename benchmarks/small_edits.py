"""Which policy recipe learns a small-edit taste fastest: the same edited generations (the base's own greedy code,
edited by a taste of `demo.tastes`) through the real path (events -> rows -> snapshot -> run), one policy run per
recipe, then the share of fresh prompts whose greedy code the taste leaves as it is (what a user accepts) and the
parse rate.

    .venv/bin/python benchmarks/small_edits.py --model DIR --taste private --recipes combined,dpo,sft
"""

import argparse
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# name -> (run kind, run config overrides[, the project's dataset settings for this recipe's rows])
RECIPES: dict[str, tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]] = {
    "combined": ("combined", {}),
    "dpo": ("dpo", {}),
    "sft": ("sft", {}),
    "kto": ("kto", {}),
    "combined-beta0.5": ("combined", {"beta": 0.5}),
    "combined-sft1": ("combined", {"loss_weights": [1.0, 1.0]}),
    "combined-6ep": ("combined", {"epochs": 6.0, "max_steps": 200}),
    "sft-10ep": ("sft", {"epochs": 10.0, "max_steps": 300}),
    "sft-10ep-lr1e-3": ("sft", {"epochs": 10.0, "max_steps": 300, "learning_rate": 1e-3}),
    "sft-10ep-lr5e-4": ("sft", {"epochs": 10.0, "max_steps": 300, "learning_rate": 5e-4}),
    "sft-5ep-lr1e-3": ("sft", {"epochs": 5.0, "max_steps": 300, "learning_rate": 1e-3}),
    "sft-20ep-lr5e-4": ("sft", {"epochs": 20.0, "max_steps": 600, "learning_rate": 5e-4}),
    "sft-10ep-lr1e-3-accepted": (
        "sft",
        {"epochs": 10.0, "max_steps": 300, "learning_rate": 1e-3},
        {"sft_accepted": True},
    ),
    "sft-10ep-lr5e-4-accepted": (
        "sft",
        {"epochs": 10.0, "max_steps": 300, "learning_rate": 5e-4},
        {"sft_accepted": True},
    ),
    "sft-10ep-lr2e-4-accepted": (
        "sft",
        {"epochs": 10.0, "max_steps": 300, "learning_rate": 2e-4},
        {"sft_accepted": True},
    ),
    "sft-5ep-lr5e-4-accepted": (
        "sft",
        {"epochs": 5.0, "max_steps": 300, "learning_rate": 5e-4},
        {"sft_accepted": True},
    ),
    "combined-10ep-sft1": ("combined", {"epochs": 10.0, "max_steps": 300, "loss_weights": [1.0, 1.0]}),
    "combined-10ep-sft1-beta0.5": (
        "combined",
        {"epochs": 10.0, "max_steps": 300, "loss_weights": [1.0, 1.0], "beta": 0.5},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="A bootstrap output (demo.bootstrap).")
    parser.add_argument("--taste", default="private")
    parser.add_argument("--recipes", default="combined,dpo,sft")
    parser.add_argument("--n", type=int, default=160, help="Edited generations to learn from.")
    parser.add_argument("--prompts", type=int, default=32, help="Fresh prompts to measure on.")
    args = parser.parse_args()

    from core.db import session_scope
    from core.migrate import upgrade
    from core.projects import Project, create_project
    from core.settings import Settings
    from demo.corpus import prompt_for, sample_function
    from demo.tastes import load_taste
    from feedback.models import DatasetSnapshot
    from feedback.rows import build_rows
    from feedback.service import ingest
    from feedback.syntax import parses
    from ml.environment import set_threads
    from ml.loading import load_model, load_tokenizer
    from trainers import metrics, registry, runs
    from trainers.models import AdapterVersion

    set_threads()
    _, taste = load_taste(args.taste)
    rng = random.Random(0)
    tokenizer = load_tokenizer(str(args.model))
    base = load_model(str(args.model))
    train_prompts = [prompt_for(sample_function(rng)) for _ in range(args.n)]
    test_prompts = [prompt_for(sample_function(rng)) for _ in range(args.prompts)]
    clock = time.perf_counter()
    cache = Path(f"benchmarks/results/small_edits-base-{args.n}-{args.prompts}.json")  # the base's code, reused
    if cache.exists():
        completions, base_test = json.loads(cache.read_text())
    else:
        completions = metrics.generate(base, tokenizer, train_prompts, max_new_tokens=128)
        base_test = metrics.generate(base, tokenizer, test_prompts, max_new_tokens=128)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps([completions, base_test]))
    print(f"generated the base's code in {time.perf_counter() - clock:.0f} s")

    work = Path(tempfile.mkdtemp(prefix="small-edits-"))
    settings = Settings(data_dir=work)
    upgrade(settings.sqlalchemy_url)
    url = settings.sqlalchemy_url
    with session_scope(url) as session:
        project = create_project(session, f"bench-{uuid.uuid4().hex[:8]}")
        project.settings = {"model": {"base_model": str(args.model)}}
        project_id = project.id
    # What the demo's users do (demo/editors.py): reject code that does not parse, accept the rest, and edit what
    # their taste changes.
    events, t0, edited = [], datetime(2026, 1, 1, tzinfo=UTC), 0
    for i, (prompt, code) in enumerate(zip(train_prompts, completions, strict=True)):
        gid, t = f"g{i}", t0 + timedelta(minutes=i)
        later = (t + timedelta(seconds=30)).isoformat()
        events.append({"event_id": f"{gid}:gen", "type": "generation", "generation_id": gid, "prompt": prompt,
                       "completion": code, "model": "base", "language": "python", "user": f"u{i % 4}",
                       "occurred_at": t.isoformat()})  # fmt: skip
        if not parses(code):
            events.append({"event_id": f"{gid}:rej", "type": "rejected", "generation_id": gid, "occurred_at": later})
            continue
        events.append({"event_id": f"{gid}:acc", "type": "accepted", "generation_id": gid, "occurred_at": later})
        if taste(code) != code:
            edited += 1
            events.append({"event_id": f"{gid}:edit", "type": "edited", "generation_id": gid,
                           "final_text": taste(code), "occurred_at": later})  # fmt: skip
    with session_scope(url) as session:
        ingest(session, project_id, events, settings)

    def build(dataset: dict[str, Any]) -> None:
        with session_scope(url) as session:
            session.get(Project, project_id).settings = {"model": {"base_model": str(args.model)}, "dataset": dataset}
        with session_scope(url) as session:
            build_rows(session, project_id)

    def accepted(texts: list[str]) -> float:
        return sum(parses(t) and taste(t) == t for t in texts) / len(texts)

    # The promotion gate's edit replay on these prompts: the distance to what a user would keep of the base's code
    # (the base's parsing completions, edited to taste), as the first promotion is judged against the base.
    kept = {i: taste(t) for i, t in enumerate(base_test) if parses(t)}

    def replay(texts: list[str]) -> float:
        return sum(metrics.normalized_edit_distance(texts[i], k) for i, k in kept.items()) / len(kept)

    results = {"taste": args.taste, "edited": edited, "accepted": sum(parses(c) for c in completions) - edited,
               "base": {"accepted": accepted(base_test), "parse_rate": metrics.parse_rate(base_test)["rate"],
                        "replay": replay(base_test)},
               "recipes": {}}  # fmt: skip
    print(f"{args.taste}: {edited} edits, {results['accepted']} accepted as they were; base accepted "
          f"{results['base']['accepted']:.2f}, parse rate {results['base']['parse_rate']:.2f}, replay "
          f"{results['base']['replay']:.3f}")  # fmt: skip
    from peft import PeftModel

    out_dir = Path("benchmarks/results/small_edits")  # each recipe's greedy code on the fresh prompts
    out_dir.mkdir(parents=True, exist_ok=True)

    for name in args.recipes.split(","):
        kind, config, *dataset = RECIPES[name]
        build(dataset[0] if dataset else {})
        clock = time.perf_counter()
        with session_scope(url) as session:
            run_id = runs.create_run(session, project_id, kind, {**config, "eval_examples": 0}, nudge=False).id
        assert runs.execute(url, run_id, settings) == "succeeded", name
        seconds = time.perf_counter() - clock
        with session_scope(url) as session:
            version = session.get(AdapterVersion, runs.get_run(session, project_id, run_id).version_ids[-1])
            path = registry.verified_path(version)
            steps = (version.metrics or {}).get("train", {}).get("steps")
            sft_rows = session.get(DatasetSnapshot, version.snapshot_id).counts["sft"]["train"]  # what it trained on
        tuned = PeftModel.from_pretrained(load_model(str(args.model)), str(path))
        limited = metrics.generate_with_limits(tuned, tokenizer, test_prompts, max_new_tokens=128)
        texts = [text for text, _ in limited]
        broken = [truncated for text, truncated in limited if not parses(text)]
        entry = {"accepted": accepted(texts), "parse_rate": metrics.parse_rate(texts)["rate"], "seconds": seconds,
                 "steps": steps, "replay": replay(texts), "sft_rows": sft_rows, "unparsed_truncated": sum(broken),
                 "unparsed_stopped": len(broken) - sum(broken)}  # fmt: skip
        results["recipes"][name] = entry
        print(f"  {name:26} accepted {entry['accepted']:.2f}  parse {entry['parse_rate']:.2f}  replay "
              f"{entry['replay']:.3f} (not parsing: "
              f"{entry['unparsed_truncated']} cut at 128 tokens, {entry['unparsed_stopped']} stopped)  "
              f"{sft_rows} sft rows, {steps} steps, {seconds:.0f} s")  # fmt: skip
        (out_dir / f"{args.taste}-{name}.json").write_text(json.dumps(texts, indent=1))
    (out_dir.parent / f"small_edits-{args.taste}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
