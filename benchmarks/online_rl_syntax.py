#!/usr/bin/env python
"""Does online RL keep syntax? The online RL tests (`tests/trainers/test_online_rl.py`) over seeds and configs.

The test passed on AVX-512 CPUs and failed on an AVX2-only one: a different CPU kind gives the tiny model different
rounding (its bootstrap too), and dozens of steps of sampled rollouts amplify it, so a CPU kind acts much like another
seed or another base model. One run per CPU kind cannot tell a default that holds the parse rate from a lucky one.
This builds the test's setup per base model (a SQLite project whose users add type hints, a reward model on their
edits), runs each `--configs` entry with each `--seeds` value through the real run path (`trainers.runs.execute`),
and judges each run by the test's own rules: greedy rule share on 48 fresh prompts up by 0.25 or more, and the parse
rate held (the paired 95% bootstrap interval of tuned - base per prompt not wholly below 0, the promotion gate's rule).

Run:  .venv/bin/python benchmarks/online_rl_syntax.py --model PATH --bootstrap-seeds 1,2 --configs '' parse_weight=2
      (PATH: a bootstrap output; per base model ~1 min for its reward model, then ~1 min per run on 2 cores)
Set ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 to hold torch's kernels to AVX2 on an AVX-512 CPU."""

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

PROMPTS = 48
HEADER = """| base | config | seed | greedy rule share | parse rate | broken / fixed | tuned - base interval | test |
| --- | --- | --- | --- | --- | --- | --- | --- |"""


def parse_overrides(kind: str, spec: str) -> dict[str, Any]:
    from trainers.config import parse_assignments, run_config

    overrides = parse_assignments(spec.split(",")) if spec else {}
    run_config(kind, overrides)  # a bad key or value is refused here, before any training
    return overrides


def reward_project(url: str, model_dir: Path, data_dir: Path) -> int:
    from tests.trainers.tiny import execute, style_project

    project_id = style_project(url, model_dir, n=240, axis="type_hints", value=True)
    run = execute(url, project_id, "reward", data_dir, max_steps=60, eval_examples=40)
    if run.status != "succeeded":
        raise SystemExit(f"reward model run failed: {run.error}")
    return project_id


def greedy(model: Any, tokenizer: Any, prompts: list[str]) -> tuple[list[bool | None], list[float]]:
    """Per prompt: does the greedy code follow the rule (None: undecided), and does it parse."""
    from demo.style import follows
    from trainers import metrics

    texts = metrics.generate(model, tokenizer, prompts, max_new_tokens=160)
    return [follows(t, "type_hints", True) for t in texts], [float(metrics.parses(t)) for t in texts]


def share(verdicts: list[bool | None]) -> float:
    decided = [v for v in verdicts if v is not None]
    return sum(decided) / len(decided) if decided else 0.0


def one_run(
    url: str, project_id: int, data_dir: Path, model_dir: Path, kind: str, overrides: dict, seed: int, base: tuple
) -> dict:
    from peft import PeftModel

    from core.db import session_scope
    from ml.loading import load_model, load_tokenizer
    from tests.trainers.tiny import execute
    from trainers import metrics, registry
    from trainers.models import AdapterVersion

    started = time.perf_counter()
    config = {"eval_examples": 40, "seed": seed, **overrides}
    run = execute(url, project_id, kind, data_dir, **config)
    if run.status != "succeeded":
        return {"status": run.status, "error": run.error}
    with session_scope(url) as session:
        version = session.get(AdapterVersion, run.version_ids[-1])
        assert version is not None
        path = str(registry.verified_path(version))
    model = PeftModel.from_pretrained(load_model(str(model_dir)), path)
    prompts, base_rules, base_parses = base
    rules, parses = greedy(model, load_tokenizer(str(model_dir)), prompts)
    flips = list(zip(base_parses, parses, strict=True))
    change = metrics.paired_difference(parses, base_parses)
    shares = [share(base_rules), share(rules)]
    row: dict[str, Any] = {
        "rule_share": shares,
        "parse_rate": [sum(base_parses) / len(base_parses), sum(parses) / len(parses)],
        "broken": flips.count((1.0, 0.0)),
        "fixed": flips.count((0.0, 1.0)),
        "parse_interval": [change["low"], change["high"]],
        "seconds": time.perf_counter() - started,
    }
    row["learns"] = shares[1] >= shares[0] + 0.25
    row["parse_held"] = change["high"] >= 0
    return row


def base_models(args: argparse.Namespace, work: Path) -> list[tuple[str, Path]]:
    """The given bootstrap outputs, then TINY_MODEL bootstrapped with each --bootstrap-seeds seed (another corpus,
    initialisation and data order: another base model of the same recipe, as another CPU kind's bootstrap is)."""
    from dataclasses import replace

    from demo.bootstrap import TINY_MODEL, bootstrap

    models = [(str(path), path) for path in args.model]
    for seed in args.bootstrap_seeds:
        out = work / f"bootstrap-{seed}"
        print(f"bootstrapping TINY_MODEL with seed {seed} ...", flush=True)
        bootstrap(out, replace(TINY_MODEL, seed=seed))
        models.append((f"bootstrap seed {seed}", out))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="*", default=[], help="Bootstrap outputs (editloop bootstrap).")
    parser.add_argument(
        "--bootstrap-seeds",
        type=lambda text: [int(s) for s in text.split(",")],
        default=[],
        help="Also bootstrap TINY_MODEL with each of these seeds (comma-separated; ~2 min each) and use those.",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[""],
        help="Run config overrides per entry, comma-separated key=value ('' for the run config's defaults, which "
        "the slow RLOO test runs).",
    )
    parser.add_argument("--kind", choices=("rloo", "grpo"), default="rloo", help="The online RL method.")
    parser.add_argument("--seeds", default="0,1,2,3", help="Run seeds (comma-separated).")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="Where the JSON goes.")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    from core.errors import InvalidInput

    try:
        # A bad key is refused here, before any work.
        configs = [(spec, parse_overrides(args.kind, spec)) for spec in args.configs]
    except InvalidInput as exc:
        parser.error(f"--configs: {exc}")
    for path in args.model:
        if not (path / "config.json").is_file():
            parser.error(f"--model: {path} holds no model (config.json); pass a bootstrap output")
    if not args.model and not args.bootstrap_seeds:
        parser.error("--model or --bootstrap-seeds: name at least one base model")

    from core.migrate import upgrade
    from demo.corpus import prompt_for, sample_function
    from ml.loading import load_model, load_tokenizer

    work = Path(tempfile.mkdtemp(prefix="rl-syntax-"))
    url = f"sqlite:///{work / 'editloop.db'}"
    upgrade(url)
    rng = random.Random(12345)  # the slow test's fresh prompts
    prompts = [prompt_for(sample_function(rng)) for _ in range(PROMPTS)]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"online_rl_syntax-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    results: list[dict[str, Any]] = []
    record = {
        "machine": platform.processor() or platform.machine(),
        "kernels": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")},
        "kind": args.kind,
        "results": results,
    }
    for name, model_dir in base_models(args, work):
        print(f"{name}: training the reward model on the type-hints rule ...", flush=True)
        project_id = reward_project(url, model_dir, work / "data")
        base_rules, base_parses = greedy(load_model(str(model_dir)), load_tokenizer(str(model_dir)), prompts)
        print(HEADER)
        for spec, overrides in configs:
            for seed in seeds:
                base = (prompts, base_rules, base_parses)
                row = one_run(url, project_id, work / "data", model_dir, args.kind, overrides, seed, base)
                results.append({"base": name, "config": spec, "seed": seed, **row})
                path.write_text(json.dumps(record, indent=2))  # after every run: a stopped sweep keeps what it ran
                if "error" in row:
                    print(f"| {name} | {spec or 'defaults'} | {seed} | run {row['status']}: {row['error']} |||||")
                    continue
                verdict = "pass" if row["learns"] and row["parse_held"] else "FAIL"
                print(
                    f"| {name} | {spec or 'defaults'} | {seed}"
                    f" | {row['rule_share'][0]:.2f} -> {row['rule_share'][1]:.2f}"
                    f" | {row['parse_rate'][0]:.2f} -> {row['parse_rate'][1]:.2f} | {row['broken']} / {row['fixed']}"
                    f" | [{row['parse_interval'][0]:+.2f}, {row['parse_interval'][1]:+.2f}] | {verdict} |",
                    flush=True,
                )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
