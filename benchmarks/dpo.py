#!/usr/bin/env python
"""DPO benchmark: our DPO path (`trainers.methods.dpo.train`) against plain TRL `DPOTrainer` with its defaults.

Both train the same model (a randomly initialised Llama built here, or `--model PATH`) on the same preference pairs
(`demo.corpus.style_pair`: the same function with and without a style rule, type hints by default) with the same
LoRA config, learning rate, batch size, steps and seed. Each side runs in its own subprocess, so the peak memory is
that run's alone. Reported per side: pairs/s (the headline counts TRL's setup too: tokenization and, for us, the
reference log-prob precompute, since precomputing moves work out of the steps), the training loop's pairs/s alone,
peak memory, and the final metrics on held-out pairs, computed the same way for both. Prints a table, writes JSON.

Run:  .venv/bin/python benchmarks/dpo.py            (tiny model, 2 runs a side; see --help)
"""

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

BASELINES = {"trl": "trl default", "trl_fp32": "trl fp32"}  # trl_fp32: TRL's defaults but bf16=False
SIDES = ("ours", *BASELINES)
SPEED_TARGET, MEMORY_TARGET = 1.5, 0.6  # ours/trl: pairs/s at least, peak memory at most
ACCURACY_TOLERANCE, RULE_TOLERANCE = 0.03, 0.10  # "equal metrics" on the held-out set
SIZES = {  # LlamaConfig fields; vocab 2048 and tied embeddings for both
    "tiny": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "small": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 4},
}  # fmt: skip
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


# --- setup (parent process) ----------------------------------------------------------------------------------------


def build_model(size: str, out: Path, seed: int) -> None:
    """A ByteLevel BPE tokenizer (vocab 2048, distinct pad) trained on the synthetic corpus, and a randomly initialised
    Llama of the given size, saved together as a local model directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import trainers as bpe
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from demo.corpus import corpus

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = bpe.BpeTrainer(
        vocab_size=2048, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(corpus(5000, seed), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[1]
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)


def parse_rule(text: str) -> tuple[str, object]:
    axis, _, raw = text.partition("=")
    value: object = {"true": True, "false": False}.get(raw.lower(), raw)
    return axis, value


def make_data(args: argparse.Namespace) -> dict[str, Any]:
    """Training pairs, and held-out pairs whose prompts never occur in training (their own random stream)."""
    from demo.corpus import style_pair

    axis, value = parse_rule(args.rule)
    rng = random.Random(args.seed)
    train = [dict(zip(("prompt", "chosen", "rejected"), style_pair(rng, axis, value), strict=True))
             for _ in range(args.pairs)]  # fmt: skip
    seen = {r["prompt"] for r in train}
    held_rng, held = random.Random(args.seed + 1), []
    while len(held) < args.eval_pairs:
        prompt, chosen, rejected = style_pair(held_rng, axis, value)
        if prompt not in seen:
            seen.add(prompt)
            held.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return {"axis": axis, "value": value, "train": train, "held_out": held}


def tokens_per_pair(model_dir: str, rows: list[dict[str, str]]) -> float:
    """Mean real (non-pad) tokens of a pair as DPOTrainer feeds it: prompt + chosen + eos, prompt + rejected + eos."""
    from ml.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    eos = tok.eos_token or ""
    texts = [r["prompt"] + r[side] + eos for r in rows for side in ("chosen", "rejected")]
    return sum(len(ids) for ids in tok(texts)["input_ids"]) / len(rows)


# --- one training run (worker subprocess) --------------------------------------------------------------------------


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(side: str, spec_path: Path, result_path: Path) -> None:
    started = time.perf_counter()
    from ml.environment import offline_env

    offline_env()
    # Both sides import the same modules, so that the memory after imports is the same baseline.
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from ml.loading import load_tokenizer
    from ml.trl_run import lora_config
    from trainers.config import DPORunConfig
    from trainers.methods import dpo

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda"
    imported = time.perf_counter()

    tok = load_tokenizer(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    with torch.no_grad():  # weights may be mapped from the file lazily: make them resident, part of the baseline
        sum(float(p.sum()) for p in model.parameters())
    if cuda:
        model.to("cuda")
        torch.cuda.reset_peak_memory_stats()
    params = sum(p.numel() for p in model.parameters())
    config = DPORunConfig(
        seed=spec["seed"],
        learning_rate=spec["learning_rate"],
        max_steps=spec["steps"],
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        beta=spec["beta"],
        **spec["ours_overrides"],
    )
    rows, work_dir = spec["train"], Path(spec["work_dir"]) / side
    loaded, cpu_loaded, load_before = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
    result: dict[str, Any] = {
        "side": side,
        "rss_loaded_mb": rss_mb(),
        "peak_rss_loaded_mb": peak_rss_mb(),
        "import_s": imported - started,
        "load_s": loaded - imported,
    }
    if cuda:
        result["gpu_loaded_mb"] = torch.cuda.memory_allocated() / 2**20

    if side == "ours":
        trained = dpo.train(config, model, tok, rows, work_dir)
        finished = time.perf_counter()
        model, steps = trained.model, trained.metrics["steps"]
        train_s, train_log = trained.metrics["train_seconds"], trained.metrics["last_log"]
    else:
        # TRL's defaults for everything but what this machine and a fair comparison need.
        args = DPOConfig(
            output_dir=str(work_dir),
            use_cpu=not cuda,
            learning_rate=config.learning_rate,
            per_device_train_batch_size=config.batch_size,
            max_steps=config.max_steps,
            seed=config.seed,
            beta=config.beta,
            report_to="none",
            # TRL's default bf16=True is autocast on the CPU: native on AVX512-BF16/AMX, emulated (tens of times
            # slower) elsewhere. trl_fp32 is the baseline that does not depend on it.
            **({"bf16": False} if side == "trl_fp32" else {}),
            save_strategy="no",
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora_config(config, "CAUSAL_LM"),
        )
        ready = time.perf_counter()
        trainer.train()
        finished = time.perf_counter()
        model, steps, train_s = trainer.model, trainer.state.global_step, finished - ready
        logged = [entry for entry in trainer.state.log_history if "rewards/accuracies" in entry]
        train_log = logged[-1] if logged else {}

    total_s = finished - loaded
    pairs = steps * config.batch_size
    result.update(
        cpu_s=cpu_seconds() - cpu_loaded,
        loadavg=[load_before, os.getloadavg()[0]],
        peak_rss_mb=peak_rss_mb(),
        steps=steps,
        pairs_trained=pairs,
        setup_s=total_s - train_s,
        train_s=train_s,
        total_s=total_s,
        pairs_per_s=pairs / total_s,
        train_pairs_per_s=pairs / train_s,
        params=params,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        train_log={k: v for k, v in train_log.items() if isinstance(v, int | float)},
    )
    result["train_increase_mb"] = result["peak_rss_mb"] - result["rss_loaded_mb"]
    if cuda:
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_increase_mb"] = result["gpu_peak_mb"] - result["gpu_loaded_mb"]
    evaluated = time.perf_counter()
    result.update(evaluate(model, tok, spec))
    result["eval_s"] = time.perf_counter() - evaluated
    result_path.write_text(json.dumps(result, indent=1))


def evaluate(model: Any, tok: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The same held-out figures for both sides: the implicit reward's pairwise accuracy and margin, and how often
    greedy completions of held-out prompts follow the rule (adapter on, and off: the base, a cross-check)."""
    from demo.style import follows
    from trainers.metrics import generate, implicit_reward_accuracy

    held = spec["held_out"]
    prompts, chosen, rejected = ([r[k] for r in held] for k in ("prompt", "chosen", "rejected"))
    reward = implicit_reward_accuracy(model, tok, prompts, chosen, rejected, spec["beta"], batch_size=16)
    out: dict[str, Any] = {
        "heldout_accuracy": reward["accuracy"],
        "heldout_margin": reward["mean_margin"],
        "heldout_chosen_reward": reward["chosen_reward"],
        "heldout_rejected_reward": reward["rejected_reward"],
        "heldout_pairs": reward["n"],
    }
    gen_prompts = prompts[: spec["gen_prompts"]]
    for name, disabled in (("rule", False), ("base_rule", True)):
        texts = generate(model, tok, gen_prompts, spec["max_new_tokens"], batch_size=16, adapter_disabled=disabled)
        verdicts = [follows(t, spec["axis"], spec["value"]) for t in texts]
        shown = [v for v in verdicts if v is not None]
        out[f"{name}_rate"] = sum(shown) / len(shown) if shown else None
        out[f"{name}_shown"] = len(shown)
        out[f"{name}_n"] = len(verdicts)
        if not disabled:
            out["samples"] = texts[:2]
    return out


# --- orchestration and report ---------------------------------------------------------------------------------------


def run_side(side: str, spec_path: Path, work: Path, env: dict[str, str], index: int) -> dict[str, Any]:
    result_path, log_path = work / f"{side}-{index}.json", work / f"{side}-{index}.log"
    command = [sys.executable, __file__, "--worker", side, "--spec", str(spec_path), "--result", str(result_path)]
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if code != 0 or not result_path.exists():
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"the {side} run failed (exit {code}); last lines of its log:\n{tail}")
    return json.loads(result_path.read_text())


TIMINGS = (
    "pairs_per_s",
    "train_pairs_per_s",
    "setup_s",
    "train_s",
    "total_s",
    "cpu_s",
    "loadavg",
    "model_tflops_per_s",
    "mfu",
)


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side over its repeats: timings from its fastest run (other tenants of a shared machine only ever slow a
    run down, so the fastest is the least disturbed), every other numeric field the median; the rest from the first."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
            middle = statistics.median(values)
            out[key] = int(middle) if isinstance(value, int) and middle == int(middle) else middle
    fastest = max(runs, key=lambda r: r["pairs_per_s"])
    out.update({key: fastest[key] for key in TIMINGS if key in fastest})
    return out


def add_mfu(result: dict[str, Any], tokens_per_pair: float, peak_tflops: float | None) -> None:
    """Model FLOPs = 6 * N * T (N all parameters, T real tokens trained): with LoRA that is the policy forward (2NT),
    the backward through the frozen weights (2NT, no weight gradients) and the reference forward (2NT)."""
    tokens = result["pairs_trained"] * tokens_per_pair
    result["tokens_trained"] = tokens
    result["model_tflops_per_s"] = 6 * result["params"] * tokens / result["total_s"] / 1e12
    result["mfu"] = result["model_tflops_per_s"] / peak_tflops if peak_tflops else None


def native_bf16(device: str) -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX (elsewhere torch
    emulates them, which is what TRL's default bf16 autocast then runs on)."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    from ml.environment import native_bf16_cpu

    return native_bf16_cpu()


def ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


ROWS = [  # (label, key, digits, compare: ratio ours/trl or difference)
    ("pairs/s, incl. setup (headline)", "pairs_per_s", 1, "ratio"),
    ("pairs/s, training loop only", "train_pairs_per_s", 1, "ratio"),
    ("setup s (tokenize, ref precompute)", "setup_s", 2, "ratio"),
    ("training loop s", "train_s", 2, "ratio"),
    ("peak RSS MB", "peak_rss_mb", 0, "ratio"),
    ("RSS after imports + model MB", "rss_loaded_mb", 0, "ratio"),
    ("training increase MB", "train_increase_mb", 0, "ratio"),
    ("GPU peak allocated MB", "gpu_peak_mb", 0, "ratio"),
    ("GPU training increase MB", "gpu_increase_mb", 0, "ratio"),
    ("model TFLOP/s (6NT)", "model_tflops_per_s", 3, "ratio"),
    ("MFU", "mfu", 4, "ratio"),
    ("held-out implicit reward accuracy", "heldout_accuracy", 3, "diff"),
    ("held-out reward margin", "heldout_margin", 3, "ratio"),
    ("rule rate of greedy samples", "rule_rate", 3, "diff"),
    ("rule rate, adapter off (base)", "base_rule_rate", 3, "diff"),
    ("train log: rewards/accuracies", ("train_log", "rewards/accuracies"), 3, "diff"),
    ("train log: rewards/margins", ("train_log", "rewards/margins"), 3, "ratio"),
]


def lookup(result: dict[str, Any], key: str | tuple[str, str]) -> Any:
    return result.get(key[0], {}).get(key[1]) if isinstance(key, tuple) else result.get(key)


def report(summary: dict[str, Any]) -> str:
    """The table: ours, then each baseline that ran with its ours/baseline ratio (or difference), then the target's
    verdict for each baseline (the issue's target is against TRL's defaults, `trl`)."""
    ours, setup = summary["summary"]["ours"], summary["setup"]
    baselines = [side for side in BASELINES if side in summary["summary"]]
    lines = [
        f"DPO: ours vs TRL DPOTrainer ({', '.join(BASELINES[b] for b in baselines)}). {setup['model']} "
        f"({fmt(ours['params'], 0)} params, {fmt(ours['trainable_params'], 0)} trainable LoRA), {setup['pairs']} "
        f"pairs, {setup['steps']} steps x {setup['batch_size']} pairs, ~{setup['tokens_per_pair']:.0f} tokens/pair, "
        f"{setup['device']} ({setup['threads']} threads, native bf16: {setup.get('native_bf16')}), "
        f"{setup['repeats']} interleaved run(s) per side (timings: the fastest; memory and metrics: the median)",
        "",
        f"{'':38} {'ours':>12}" + "".join(f" {BASELINES[b]:>12} {'ours/' + b:>13}" for b in baselines),
    ]
    for label, key, digits, compare in ROWS:
        values = [lookup(ours, key)] + [lookup(summary["summary"][b], key) for b in baselines]
        if all(v is None for v in values):
            continue
        a = values[0]
        line = f"{label:38} {fmt(a, digits):>12}"
        for b in values[1:]:
            if compare == "ratio":
                rel = fmt(ratio(a, b), 2) + "x" if ratio(a, b) is not None else "-"
            else:
                rel = f"{a - b:+.3f}" if isinstance(a, int | float) and isinstance(b, int | float) else "-"
            line += f" {fmt(b, digits):>12} {rel:>13}"
        lines.append(line)
    shown = " / ".join(str(summary["summary"][s]["rule_shown"]) for s in ["ours", *baselines])
    lines += [
        "",
        f"rule: {setup['rule']}; held-out: {ours['heldout_pairs']} pairs, {ours['rule_n']} greedy samples of "
        f"{setup['max_new_tokens']} tokens (rule rate over the {shown} samples that show the axis)",
    ]
    for b in baselines:
        verdict = summary["verdicts"][b]
        lines.append(
            f"target vs {BASELINES[b]}: pairs/s >= {SPEED_TARGET}x ({fmt(verdict['speed'], 2)}x: "
            f"{verdict['speed_ok']}), peak memory <= {MEMORY_TARGET}x ({fmt(verdict['memory'], 2)}x: "
            f"{verdict['memory_ok']}), equal metrics (accuracy within {ACCURACY_TOLERANCE}, rule rate within "
            f"{RULE_TOLERANCE}: {verdict['metrics_ok']}) -> {'MET' if verdict['met'] else 'NOT MET'}"
        )
    if len(summary["runs"]["ours"]) > 1:
        for side in summary["runs"]:
            each = ", ".join(f"{r['pairs_per_s']:.1f}" for r in summary["runs"][side])
            lines.append(f"{side}: pairs/s per run (incl. setup): {each}")
    return "\n".join(lines)


def verdict(ours: dict[str, Any], trl: dict[str, Any], device: str) -> dict[str, Any]:
    speed = ratio(ours["pairs_per_s"], trl["pairs_per_s"])
    memory = ratio(ours["gpu_peak_mb"], trl["gpu_peak_mb"]) if device == "cuda" else None
    memory = memory if memory is not None else ratio(ours["peak_rss_mb"], trl["peak_rss_mb"])
    accuracy_ok = abs(ours["heldout_accuracy"] - trl["heldout_accuracy"]) <= ACCURACY_TOLERANCE
    rules = (ours["rule_rate"], trl["rule_rate"])
    rule_ok = None in rules or abs(rules[0] - rules[1]) <= RULE_TOLERANCE
    out = {
        "speed": speed,
        "memory": memory,
        "speed_ok": bool(speed and speed >= SPEED_TARGET),
        "memory_ok": bool(memory and memory <= MEMORY_TARGET),
        "metrics_ok": bool(accuracy_ok and rule_ok),
    }
    out["met"] = out["speed_ok"] and out["memory_ok"] and out["metrics_ok"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=(
            "Our DPO path (trainers.methods.dpo.train: on the CPU fp32 with the speedups of trainers/cpu, the frozen "
            "base in bf16 where the CPU has native bf16, oneDNN's primitive cache capped at 8; no activation "
            "checkpointing, precomputed reference log-probs, length-grouped micro-batches, ...) against TRL's "
            "DPOTrainer with its default settings, on the same model, preference pairs, LoRA config (r=16, "
            "all-linear), learning rate, batch size, steps and seed. Each run is a subprocess of its own; the two "
            "alternate when repeated. Figures: pairs/s over trainer setup + training (the headline: setup includes "
            "tokenization and the reference precompute) and over the training loop alone; peak RSS (ru_maxrss), RSS "
            "after imports + model load and the increase during training (on CUDA: torch.cuda.max_memory_allocated, "
            "and MFU from 6 * params * real tokens); held-out implicit-reward accuracy and margin "
            "(trainers.metrics.implicit_reward_accuracy) and the rate at which greedy completions follow the rule "
            "(demo.style.follows). The model is a randomly initialised Llama with a BPE tokenizer trained on the "
            "synthetic corpus (or --model PATH), so rule rates mostly say 'cannot tell': compare the reward figures. "
            "Target: ours >= 1.5x pairs/s at <= 0.6x peak memory with equal metrics."
        )
    )
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="tiny: hidden 128, 4 layers, ~1M params; small: hidden 512, 8 layers, ~26M (default tiny)",
    )
    p.add_argument("--model", help="a local causal LM directory (model + tokenizer) instead of building one")
    p.add_argument("--pairs", type=int, default=1000, help="training pairs (default 1000)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate for both (default 1e-4)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta for both (default 0.1, TRL's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of model init, data and training (default 0)")
    p.add_argument("--rule", default="type_hints=true", help="style rule the pairs prefer, axis=value")
    p.add_argument("--eval-pairs", type=int, default=128, help="held-out pairs (default 128)")
    p.add_argument("--gen-prompts", type=int, default=32, help="held-out prompts sampled greedily (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per greedy sample (default 64)")
    p.add_argument(
        "--repeats", type=int, help="runs per side, interleaved; timings of the fastest (default 2; --quick 1)"
    )
    p.add_argument(
        "--runs",
        default="ours,trl",
        help="sides to run, comma-separated: ours, trl (TRL's defaults: the target's baseline), trl_fp32 (TRL's "
        "defaults but bf16=False: on a CPU without native bf16, TRL's default bf16 autocast is emulated and tens of "
        "times slower, so this is the baseline that compares the methods there) (default ours,trl)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a DPORunConfig field of our side (repeatable), e.g. --set micro_batch_size=8, --set "
        "cpu_bf16_base=off (fp32 base), --set cpu_speedups=false (TRL's DPOTrainer as it is)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when available")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all)")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: bf16 dense figure by GPU name)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 200 pairs, 20 steps, 32 held-out pairs, 8 samples, 1 run a side",
    )
    p.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/dpo-<UTC timestamp>.json)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (model, data, per-run logs)")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        worker(args.worker, args.spec, args.result)
        return 0
    if args.quick:
        args.pairs, args.steps, args.eval_pairs, args.gen_prompts = 200, 20, 32, 8
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    sides = [s for s in args.runs.split(",") if s]
    if any(s not in SIDES for s in sides):
        p.error(f"--runs: sides are {', '.join(SIDES)}")

    from ml.environment import ONEDNN_CACHE_VAR, library_versions, offline_env
    from trainers.config import parse_assignments

    user_onednn_cache = os.environ.get(ONEDNN_CACHE_VAR)
    offline_env()
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    # offline_env caps oneDNN's primitive cache for our path; TRL's sides keep oneDNN's default (1,024) unless the
    # caller set the variable: they measure TRL as a user runs it.
    trl_env = dict(env, **{ONEDNN_CACHE_VAR: user_onednn_cache or "1024"})
    peak_tflops = args.peak_tflops
    if device == "cuda" and peak_tflops is None:
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)

    work = Path(tempfile.mkdtemp(prefix="editloop-bench-dpo-"))
    started = datetime.now(UTC)
    try:
        built = time.perf_counter()
        model_dir = args.model or str(work / "model")
        if not args.model:
            build_model(args.size, Path(model_dir), args.seed)
        data = make_data(args)
        per_pair = tokens_per_pair(model_dir, data["train"])
        setup = {
            "model": args.model or f"random Llama '{args.size}'",
            "pairs": args.pairs,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "beta": args.beta,
            "seed": args.seed,
            "rule": args.rule,
            "device": device,
            "threads": args.threads,
            "repeats": args.repeats,
            "tokens_per_pair": per_pair,
            "max_new_tokens": args.max_new_tokens,
            "ours_overrides": parse_assignments(args.set),
            "native_bf16": native_bf16(device),
            "onednn_primitive_cache": {"ours": env.get(ONEDNN_CACHE_VAR), "trl": trl_env[ONEDNN_CACHE_VAR]},
            "build_s": time.perf_counter() - built,
        }
        spec = {
            **setup,
            **data,
            "model_dir": model_dir,
            "work_dir": str(work),
            "epochs": float(max(3, -(-args.steps * args.batch_size // args.pairs) + 1)),
            "gen_prompts": args.gen_prompts,
        }
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for index in range(args.repeats):
            for side in sides if index % 2 == 0 else sides[::-1]:
                result = run_side(side, spec_path, work, env if side == "ours" else trl_env, index)
                add_mfu(result, per_pair, peak_tflops if device == "cuda" else None)
                runs[side].append(result)
                print(f"  {side} run {index + 1}: {result['pairs_per_s']:.1f} pairs/s incl. setup, "
                      f"{result['train_pairs_per_s']:.1f} in the loop, peak RSS {result['peak_rss_mb']:.0f} MB, "
                      f"held-out accuracy {result['heldout_accuracy']:.3f}, load average "
                      f"{result['loadavg'][0]:.1f}-{result['loadavg'][1]:.1f}", flush=True)  # fmt: skip
        summaries = {side: summarize(rs) for side, rs in runs.items()}
        summary: dict[str, Any] = {
            "benchmark": "dpo",
            "started": started.isoformat(),
            "host": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
            "libraries": library_versions(),
            "setup": setup,
            "runs": runs,
            "summary": summaries,
        }
        baselines = [b for b in BASELINES if b in summaries]
        if "ours" in summaries and baselines:
            summary["verdicts"] = {b: verdict(summaries["ours"], summaries[b], device) for b in baselines}
            summary["ratios"] = {
                f"ours/{b}": {
                    key: ratio(summaries["ours"].get(key), summaries[b].get(key))
                    for _, key, _, compare in ROWS
                    if compare == "ratio" and isinstance(key, str)
                }
                for b in baselines
            }
            if "trl" in summaries:  # the target is against TRL's defaults
                summary["verdict"] = summary["verdicts"]["trl"]
                summary["ratios_ours_over_trl"] = summary["ratios"]["ours/trl"]
            print()
            print(report(summary))
        out = args.out or HERE / "results" / f"dpo-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1, default=str))
        print(f"\nresults: {out}")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
