#!/usr/bin/env python
"""Online RL benchmark: where a GRPO / RLOO step's time goes on our path (`trainers.methods.online.build_trainer`).

Setup: a bootstrapped code model (`--model PATH`, e.g. `editloop bootstrap`'s output; without it one is bootstrapped
here, ~2 minutes), a reward model trained on the type-hints rule (`rewards.training.train`, 60 steps, then loaded
as the pipeline loads a version: merged into its base), and style prompts. Then each kind trains `--steps` steps
with the run config's defaults (8 completions per step, 4 per prompt, 128 new tokens at most, beta 0.04), and every
step is split into:
- generation: the rollouts (`_generate_single_turn`: transformers `generate` on the LoRA policy, adapter active);
- scoring: the reward functions (`_calculate_rewards`: reward model, parse validity, length guard);
- reference: log-probs computed without gradients (the reference, i.e. the base with the adapter disabled, for the
  KL term; and the old policy's when TRL needs them);
- training: the rest of the step (policy forward and backward on the completions, the optimizer, TRL's bookkeeping).
The first `--warmup` steps are left out of the figures. Prints a table (means), writes JSON to benchmarks/results/
(means, medians, and the load average: on a shared machine one slow step moves a mean a lot).

Run:  .venv/bin/python benchmarks/online_rl.py --model /path/to/bootstrap   (about 1 minute per kind on 2 cores)
A GPU is used when present (then `--vllm` generates with TRL's vLLM colocate mode, if vllm is installed)."""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

BUCKETS = ("generation", "scoring", "reference", "training")


def prepare(model_dir: Path | None, work: Path) -> Path:
    if model_dir is not None:
        return model_dir
    from demo.bootstrap import TINY_MODEL, bootstrap

    out = work / "model"
    print("bootstrapping a tiny model (pass --model to reuse one) ...", flush=True)
    bootstrap(out, TINY_MODEL)
    return out


def reward_model(model_dir: Path, tokenizer: Any, work: Path, rng: random.Random) -> Any:
    """A reward model version on the type-hints rule, saved and loaded back as the pipeline loads one."""
    from demo.corpus import style_pair
    from ml.loading import load_model
    from rewards.config import RewardRunConfig
    from rewards.functions import RewardModelScore, load_reward_model
    from rewards.training import train

    fields = ("prompt", "chosen", "rejected")
    rows = [dict(zip(fields, style_pair(rng, "type_hints", True), strict=True)) for _ in range(480)]
    trained = train(RewardRunConfig(max_steps=60), load_model(str(model_dir), head="reward"), tokenizer, rows, work)
    trained.model.save_pretrained(str(work / "reward"))
    return RewardModelScore(load_reward_model(str(model_dir), None, str(work / "reward"), tokenizer), tokenizer)


class Timers:
    """Seconds per bucket per optimizer step, from wrappers around the trainer's own methods."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.began = 0.0

    def wrap(self, trainer: Any, method: str, bucket: str | None) -> None:
        original = getattr(trainer, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            import torch

            name = bucket or ("training_forward" if torch.is_grad_enabled() else "reference")
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.current[name] += time.perf_counter() - started

        setattr(trainer, method, timed)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timers = self

        class _Steps(TrainerCallback):  # type: ignore[misc]
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timers.current = defaultdict(float)
                timers.began = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                total = time.perf_counter() - timers.began
                row = {b: timers.current.get(b, 0.0) for b in ("generation", "scoring", "reference")}
                row["training"] = total - sum(row.values())
                row["total"] = total
                timers.steps.append(row)

        return _Steps()


def run_kind(kind: str, args: argparse.Namespace, model_dir: Path, tokenizer: Any, scorer: Any, work: Path) -> dict:
    import torch
    from transformers import set_seed

    from demo.corpus import prompt_for, sample_function
    from ml.loading import load_model
    from trainers.config import run_config
    from trainers.methods.online import _history_callback, build_trainer

    overrides: dict[str, Any] = {"max_steps": args.steps, "prompts": 256}
    for field in ("batch_size", "num_generations", "max_completion_length", "beta"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    if args.vllm:
        overrides["use_vllm"] = True
    config = run_config(kind, overrides)
    rng = random.Random(7)
    rows = [{"prompt": prompt_for(sample_function(rng)), "python": True} for _ in range(256)]
    set_seed(0)
    trainer = build_trainer(config, load_model(str(model_dir)), tokenizer, rows, work / kind, scorer)  # type: ignore[arg-type]
    timers = Timers()
    timers.wrap(trainer, "_generate_single_turn", "generation")
    timers.wrap(trainer, "_calculate_rewards", "scoring")
    timers.wrap(trainer, "_get_per_token_logps_and_entropies", None)
    from transformers.trainer_callback import PrinterCallback

    history = _history_callback()
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(timers.callback())
    trainer.add_callback(history)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    measured = timers.steps[args.warmup :] or timers.steps
    means = {b: statistics.fmean(s[b] for s in measured) for b in (*BUCKETS, "total")}
    medians = {b: statistics.median(s[b] for s in measured) for b in (*BUCKETS, "total")}
    lengths = [r["completions/mean_length"] for r in history.rows if "completions/mean_length" in r]
    reward = [r["rewards/reward_model/mean"] for r in history.rows if "rewards/reward_model/mean" in r]
    completions = config.batch_size  # type: ignore[attr-defined]
    return {
        "kind": kind,
        "config": config.model_dump(mode="json"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps": len(timers.steps),
        "steps_measured": len(measured),
        "wall_s": round(wall, 2),
        "s_per_step": {k: round(v, 4) for k, v in means.items()},
        "s_per_step_median": {k: round(v, 4) for k, v in medians.items()},
        "share": {b: round(means[b] / means["total"], 3) for b in BUCKETS},
        "load_average": os.getloadavg(),
        "completion_tokens_mean": round(statistics.fmean(lengths), 1) if lengths else None,
        "generated_tokens_per_s": round(completions * statistics.fmean(lengths) / means["generation"], 1)
        if lengths and means["generation"]
        else None,
        "reward_model_first_last": [round(reward[0], 3), round(reward[-1], 3)] if reward else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="A bootstrapped model directory (default: bootstrap one here).")
    parser.add_argument("--kinds", default="grpo,rloo", help="Comma-separated: grpo, rloo.")
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps per kind.")
    parser.add_argument("--warmup", type=int, default=2, help="First steps left out of the figures.")
    parser.add_argument("--batch-size", dest="batch_size", type=int, help="Completions per step (default 8).")
    parser.add_argument("--num-generations", dest="num_generations", type=int, help="Completions per prompt (4).")
    parser.add_argument("--max-completion-length", dest="max_completion_length", type=int, help="New tokens (128).")
    parser.add_argument("--beta", type=float, help="KL coefficient (0.04); 0 skips the reference pass.")
    parser.add_argument("--vllm", action="store_true", help="use_vllm=True (colocate); needs a GPU and vllm.")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="Where the JSON goes.")
    args = parser.parse_args()

    from ml.environment import offline_env, set_threads
    from ml.loading import load_tokenizer

    offline_env()
    set_threads()
    with tempfile.TemporaryDirectory(prefix="online-rl-bench-") as tmp:
        work = Path(tmp)
        model_dir = prepare(args.model, work)
        tokenizer = load_tokenizer(str(model_dir))
        print("training the reward model (60 steps) ...", flush=True)
        scorer = reward_model(model_dir, tokenizer, work, random.Random(0))
        results = []
        for kind in args.kinds.split(","):
            print(f"{kind}: {args.steps} steps ...", flush=True)
            results.append(run_kind(kind.strip(), args, model_dir, tokenizer, scorer, work))

    print("mean seconds per step (share of the step); medians in the JSON")
    header = f"{'kind':<6}{'s/step':>8}" + "".join(f"{b:>14}" for b in BUCKETS) + f"{'tokens':>8}{'gen tok/s':>11}"
    print(header)
    for r in results:
        cells = "".join(f"{r['s_per_step'][b]:>8.3f} ({r['share'][b]:>3.0%})" for b in BUCKETS)
        print(
            f"{r['kind']:<6}{r['s_per_step']['total']:>8.3f}{cells}"
            f"{r['completion_tokens_mean'] or 0:>8.1f}{r['generated_tokens_per_s'] or 0:>11.0f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"online_rl-{stamp}.json"
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    path.write_text(json.dumps({"machine": machine, "model": str(args.model), "results": results}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
