"""The GPU run's vLLM parts (benchmarks/gpu.py): a real `vllm serve` driven by serving/vllm.py, and GRPO with vLLM
rollouts. Needs CUDA and the vllm package; never imported by --cpu."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from core import artifacts
from core.settings import Settings
from serving.backend import Adapter, Params, Target
from serving.vllm import VLLMBackend

EDIT_REQUESTS = 16
MAX_TOKENS = 128


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`vllm serve` in a subprocess, with runtime LoRA loading on."""

    def __init__(self, model_dir: Path, log: Path, extra: list[str] | None = None) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        vllm = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
        cmd = [vllm, "serve", str(model_dir), "--port", str(self.port), "--enable-lora", "--max-lora-rank", "16"]
        cmd += ["--max-model-len", "2048", "--gpu-memory-utilization", "0.45", *(extra or [])]
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not start; see {log}")
            time.sleep(1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _publish(adapter_dir: Path, root: Path, label: str) -> Adapter:
    """An adapter published as the registry publishes versions (a manifest with checksums), so the backend's
    verification runs."""
    staging = artifacts.staging_dir(root, label)
    shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    destination = root / label
    artifacts.publish(staging, destination, {"label": label})
    sha = artifacts.manifest_sha256(destination)
    return Adapter(key=f"bench-{label}-{sha[:12]}", name=label, path=destination, manifest_sha256=sha)


def _edit_prompt(i: int) -> str:
    """Edit-style: the code to change is in the prompt, and most of it comes back unchanged."""
    import random

    from demo.corpus import style_pair

    prompt, _chosen, rejected = style_pair(random.Random(i), "type_hints", True)
    return f"{prompt}# Add type hints to this function, changing nothing else:\n{rejected}\n# With type hints:\n"


def _throughput(backend: VLLMBackend, target: Target, concurrency: int = 8) -> dict[str, Any]:
    """Completion tokens/s over EDIT_REQUESTS edit-style requests, `concurrency` at a time."""
    prompts = [_edit_prompt(i) for i in range(EDIT_REQUESTS)]
    tokens: list[int] = []
    lock = threading.Lock()

    def one(prompt: str) -> None:
        params = Params(prompt, None, MAX_TOKENS, 0.0, 1.0, (), 0)
        result = backend.generate(target, params, None, threading.Event())
        with lock:
            tokens.append(result.completion_tokens)

    started = time.perf_counter()
    for start in range(0, len(prompts), concurrency):
        threads = [threading.Thread(target=one, args=(p,)) for p in prompts[start : start + concurrency]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.perf_counter() - started
    return {
        "requests": len(prompts),
        "tokens": sum(tokens),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(sum(tokens) / seconds, 1),
    }


def serve_with_vllm(model_dir: Path, adapter_dir: Path, work: Path) -> dict[str, Any]:
    log = work / "vllm.log"
    store = work / "artifacts"
    store.mkdir(parents=True, exist_ok=True)
    v1, v2 = _publish(adapter_dir, store, "v1"), _publish(adapter_dir, store, "v2")
    out: dict[str, Any] = {"log": str(log)}
    server = Server(model_dir, log)
    try:
        backend = VLLMBackend(Settings(serving_backend="vllm", vllm_url=server.url))
        base = Target(str(model_dir), None, None)
        production = Target(str(model_dir), None, v1)
        params = Params(_edit_prompt(0), None, 16, 0.0, 1.0, (), 0)
        first = backend.generate(production, params, None, threading.Event())
        out["load_and_generate"] = {"ok": first.completion_tokens > 0, "loaded": list(backend.loaded)}
        switched = backend.generate(Target(str(model_dir), None, v2), params, None, threading.Event())
        out["alias_switch"] = {"ok": switched.completion_tokens > 0, "loaded": list(backend.loaded)}
        server.stop()
        server = Server(model_dir, log)  # a restart: vLLM forgets its runtime adapters
        backend.client.base_url = httpx.URL(server.url)
        again = backend.generate(production, params, None, threading.Event())  # 404, reload, retry
        out["reload_after_restart"] = {"ok": again.completion_tokens > 0}
        out["base"] = _throughput(backend, base)
        out["adapter"] = _throughput(backend, production)
    finally:
        server.stop()
    spec = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    server = Server(model_dir, log, ["--speculative-config", json.dumps(spec)])
    try:
        backend = VLLMBackend(Settings(serving_backend="vllm", vllm_url=server.url))
        out["base_ngram_speculative"] = {**_throughput(backend, Target(str(model_dir), None, None)), "config": spec}
        out["note"] = (
            "random weights do not copy their prompt as a trained code model does, so the n-gram drafts are rarely"
            " accepted here: this measures the drafting overhead, not its pay-off on real edits"
        )
    finally:
        server.stop()
    return out


def grpo_with_vllm(model_dir: Path, work: Path, steps: int = 5) -> dict[str, Any]:
    """GRPO through trainers/methods/online.py with vLLM generating the rollouts in the training process."""
    import torch

    from ml.loading import load_model, load_tokenizer
    from trainers.config import GRPORunConfig
    from trainers.methods import online

    def length_reward(completions: list[Any], **kwargs: Any) -> list[float]:
        return [-abs(len(str(c)) - 200) / 200 for c in completions]

    config = GRPORunConfig(max_steps=steps, use_vllm=True, vllm_mode="colocate", eval_examples=0)
    rows = [{"prompt": _edit_prompt(i), "python": True} for i in range(64)]
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trained = online.train(
        config,
        load_model(str(model_dir)),
        load_tokenizer(str(model_dir)),
        rows,
        work / "grpo",
        reward_model=length_reward,
    )
    return {
        "steps": trained.metrics["steps"],
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": trained.metrics["train_seconds"],
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "rewards": trained.metrics.get("rewards"),
    }
