#!/usr/bin/env python
"""The GPU run: what editloop's CUDA paths do on a lent GPU machine, with no network and no download.

A model is built from Qwen2.5-Coder-1.5B's config with random weights (its shape, not its knowledge) and a byte-level
BPE tokenizer trained here on the demo corpus; the DPO pairs come from the same corpus. It reports:
  dpo    DPO pairs/s and peak memory through our trainer in bf16 LoRA and in 4-bit QLoRA (our defaults), against TRL's
         defaults on the same data; model FLOPs utilization against the GPU's dense bf16 peak
  vllm   a real `vllm serve` driven by serving/vllm.py: runtime LoRA load, generate, alias switch (a second version),
         404-and-reload after a restart; tokens/s of an adapter against the base; n-gram speculative decoding on
         edit-style requests
  grpo   GRPO with vLLM rollouts (colocated), a few steps
With --cpu (the smoke test of the default suite): tiny shapes of the same config family, DPO in fp32 LoRA against
TRL's defaults, and the vllm and grpo sections marked "not run". Every figure goes to benchmarks/results/gpu-<UTC>.json.

Run:  benchmarks/gpu.sh          (installs what it needs into a venv, then runs this)
      benchmarks/gpu.sh --cpu    (this repository's venv; the smoke test)
"""

import argparse
import json
import os
import platform
import random
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

NOT_RUN = "not run"
# Qwen/Qwen2.5-Coder-1.5B's config.json (the shape only; no weights are downloaded).
QWEN_CODER_1_5B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TINY = {
    **QWEN_CODER_1_5B,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
# Dense bf16 peaks (FLOP/s) from the vendors' data sheets, by a substring of torch's device name.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def build_model(out: Path, shape: dict[str, Any], vocab: int) -> Path:
    """A Qwen2 model of `shape` with random weights, and a tokenizer trained on the demo corpus."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from demo.bootstrap import build_tokenizer
    from demo.corpus import corpus

    tokenizer = build_tokenizer(list(corpus(400, seed=1)), vocab)
    cpu = not torch.cuda.is_available()
    # The real vocabulary's embedding size on the GPU (its memory and FLOPs count); the tokenizer's on the CPU.
    config = Qwen2Config(
        **{**shape, "vocab_size": len(tokenizer) if cpu else shape["vocab_size"]},
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        torch_dtype="float32" if cpu else "bfloat16",
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32 if cpu else torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pairs(n: int) -> list[dict[str, str]]:
    from demo.corpus import style_pair

    rng = random.Random(5)
    return [
        dict(zip(("prompt", "chosen", "rejected"), style_pair(rng, "type_hints", True), strict=True)) for _ in range(n)
    ]


def _peak_memory_gb(cuda: bool) -> float:
    """Peak GPU memory allocated by torch, or on the CPU this process's peak resident set (it only grows)."""
    import torch

    if cuda:
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def _reset_peak(cuda: bool) -> None:
    import gc

    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def dpo_ours(
    model_dir: Path, data: list[dict[str, str]], steps: int, quantization: str, work: Path
) -> tuple[dict[str, Any], Any]:
    """Our DPO (trainers/methods/dpo.py) with our defaults; `quantization` as resolved (none | 4bit). Returns the
    figures and the trained model (the vLLM section serves its adapter)."""
    import torch

    from ml.loading import load_model, load_tokenizer
    from trainers.config import DPORunConfig
    from trainers.methods import dpo

    cuda = torch.cuda.is_available()
    _reset_peak(cuda)
    config = DPORunConfig(max_steps=steps, quantization="4bit" if quantization == "4bit" else "none", eval_examples=0)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir), quantization=quantization)
    trained = dpo.train(config, model, tokenizer, data, work)
    m = trained.metrics
    result = {
        "setup": f"editloop DPO, {'4-bit QLoRA' if quantization == '4bit' else ('bf16' if cuda else 'fp32') + ' LoRA'}",
        "batch_size": config.batch_size,
        "steps": m["steps"],
        "seconds": m["train_seconds"],
        "pairs_per_s": m["examples_per_s"],
        "peak_memory_gb": _peak_memory_gb(cuda),
        "loss_curve": m.get("loss_curve"),
    }
    return result, trained.model


def dpo_trl_defaults(model_dir: Path, data: list[dict[str, str]], steps: int, work: Path) -> dict[str, Any]:
    """TRL's DPOTrainer with DPOConfig's and LoraConfig's defaults (only what a run must set: the output, the steps,
    no reporting; on the CPU fp32, where TRL's bf16 default fails)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from ml.loading import load_model, load_tokenizer

    cuda = torch.cuda.is_available()
    _reset_peak(cuda)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir))
    extra = {} if cuda else {"use_cpu": True, "bf16": False}
    args = DPOConfig(output_dir=str(work), max_steps=steps, report_to="none", save_strategy="no", **extra)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM"),
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    return {
        "setup": "TRL defaults (DPOConfig, LoraConfig)",
        "batch_size": batch,
        "steps": int(trainer.state.global_step),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(trainer.state.global_step * batch / seconds, 3),
        "peak_memory_gb": _peak_memory_gb(cuda),
        "loss_curve": [round(h["loss"], 6) for h in trainer.state.log_history if "loss" in h],
    }


def mfu(model_dir: Path, data: list[dict[str, str]], pairs_per_s: float) -> dict[str, Any]:
    """Model FLOPs utilization of a DPO run's timed part: 4N per token for the policy's forward and backward (LoRA:
    no gradients of the frozen weights, so not the usual 6N; the reference forward is precomputed before the clock
    starts), N the non-embedding parameters, attention's own FLOPs left out. Against the dense bf16 peak."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    if not torch.cuda.is_available():
        return {"mfu": NOT_RUN, "why": "no GPU"}
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    n = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    tokens = sum(
        2 * len(tokenizer(p["prompt"]).input_ids)
        + len(tokenizer(p["chosen"]).input_ids)
        + len(tokenizer(p["rejected"]).input_ids)
        for p in data
    ) / len(data)
    achieved = pairs_per_s * tokens * 4 * n
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    return {
        "device": name,
        "non_embedding_params": n,
        "tokens_per_pair": round(tokens, 1),
        "achieved_tflops": round(achieved / 1e12, 2),
        "bf16_peak_tflops": None if peak is None else peak / 1e12,
        "mfu": None if peak is None else round(achieved / peak, 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The GPU benchmark (see the module docstring); --cpu: the smoke test.")
    p.add_argument("--cpu", action="store_true", help="tiny shapes, DPO only, no vLLM (the default suite runs this)")
    p.add_argument("--steps", type=int, default=None, help="DPO steps per setup (default 3 on --cpu, 30 on a GPU)")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--results-dir", type=Path, default=HERE / "results", help="where the JSON results go")
    args = p.parse_args(argv)

    import tempfile

    import torch

    from ml.environment import library_versions, offline_env

    offline_env()
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("no CUDA device: run with --cpu for the smoke test", file=sys.stderr)
        return 2
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    steps = args.steps or (30 if cuda else 3)
    started = datetime.now(UTC)
    work = args.work or Path(tempfile.mkdtemp(prefix="editloop-gpu-"))
    record: dict[str, Any] = {
        "started_at": started.isoformat(),
        "mode": "gpu" if cuda else "cpu smoke",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "libraries": library_versions(),
        "model_shape": QWEN_CODER_1_5B if cuda else TINY,
    }
    clock = time.perf_counter()
    model_dir = build_model(work / "model", QWEN_CODER_1_5B if cuda else TINY, vocab=8192 if cuda else 512)
    record["model_build_s"] = round(time.perf_counter() - clock, 1)
    built = json.loads((model_dir / "config.json").read_text())
    record["model_shape"] = {k: built.get(k) for k in QWEN_CODER_1_5B}  # as built (the CPU's vocabulary is smaller)
    data = pairs(steps * 8)

    ours, trained = dpo_ours(model_dir, data, steps, "none", work / "dpo-lora")
    dpo = {"lora": ours, "trl_defaults": dpo_trl_defaults(model_dir, data, steps, work / "dpo-trl")}
    if cuda:
        dpo["qlora_4bit"] = dpo_ours(model_dir, data, steps, "4bit", work / "dpo-qlora")[0]
        dpo["mfu_lora"] = mfu(model_dir, data, ours["pairs_per_s"])
    else:
        dpo["qlora_4bit"] = {
            "setup": "editloop DPO, 4-bit QLoRA",
            "result": NOT_RUN,
            "why": "bitsandbytes 4-bit needs CUDA",
        }
        dpo["mfu_lora"] = {"mfu": NOT_RUN, "why": "no GPU"}
    record["dpo"] = dpo
    if cuda:
        from benchmarks.gpu_vllm import grpo_with_vllm, serve_with_vllm

        adapter_dir = work / "adapter"
        trained.save_pretrained(str(adapter_dir))
        del trained
        _reset_peak(True)
        record["vllm"] = serve_with_vllm(model_dir, adapter_dir, work)
        record["grpo"] = grpo_with_vllm(model_dir, work)
    else:
        record["vllm"] = {"result": NOT_RUN, "why": "--cpu: no vLLM"}
        record["grpo"] = {"result": NOT_RUN, "why": "--cpu: GRPO's vLLM rollouts need a GPU"}
    record["seconds"] = round(time.perf_counter() - clock, 1)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"gpu-{'cpu-' if not cuda else ''}{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    for name, r in dpo.items():
        if "pairs_per_s" in r:
            print(f"{r['setup']:45s} {r['pairs_per_s']:>9} pairs/s  peak {r['peak_memory_gb']} GB")
        else:
            print(f"{name:45s} {json.dumps(r)}")
    print(f"vllm: {json.dumps(record['vllm'])[:400]}")
    print(f"grpo: {json.dumps(record['grpo'])[:400]}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
