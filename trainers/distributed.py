"""Training across processes: the gpu worker launches a run's training as `num_processes` data-parallel processes and
takes back the adapter that rank 0 saved; evaluation and registration stay in the worker, so one run registers one
adapter.

The launcher is the standard one: `accelerate launch` where CUDA is present or an accelerate config file is given
(DDP, DeepSpeed ZeRO-3 or FSDP as the file says), `torchrun` on the CPU (accelerate's own CPU launcher starts one
process unless MPI is installed; under torchrun the Trainer's `use_cpu` picks gloo). Each process loads the model
and the rows the worker wrote, and trains with the same method function as a one-process run: `trl_args` splits
the batch over the processes, so the global batch and the steps are the same. The CPU speedups of trainers/cpu are
off in a launched run: they patch a single process's trainer and modules, and their micro-batch choice measures
one process's memory; so is DPO's precompute of the reference log-probs (see `_main`).

Run as `python -m trainers.distributed SPEC` by the launcher only."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from ml.trl_run import BaseRunConfig, Trained


def _head(kind: str) -> Literal["causal", "reward"]:
    return "reward" if kind == "reward" else "causal"


def launched(config: BaseRunConfig) -> bool:
    return config.num_processes > 1 or config.accelerate_config is not None


def command(config: BaseRunConfig, spec: Path) -> list[str]:
    """The launch command for a run's config."""
    import torch

    module = ["-m", "trainers.distributed", str(spec)]
    if config.accelerate_config is not None or torch.cuda.is_available():
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        if config.accelerate_config is not None:
            launch += ["--config_file", config.accelerate_config]
        if config.num_processes > 1:
            launch += ["--num_processes", str(config.num_processes)]
            if config.accelerate_config is None:
                launch += ["--multi_gpu", "--num_machines", "1"]
        return [*launch, *module]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={config.num_processes}",
        *module,
    ]


def train(
    kind: str,
    config: BaseRunConfig,
    base: tuple[str, str | None],
    rows: list[dict[str, Any]],
    work_dir: Path,
    init_adapter: str | None = None,
) -> Trained:
    """Train `kind` in launched processes; returns the trained adapter on a fresh base, with rank 0's figures."""
    from peft import PeftModel

    from ml.loading import load_model, resolve_quantization

    if kind in ("grpo", "rloo"):
        raise ValueError("num_processes: online RL (grpo, rloo) trains in one process; its rollouts use vLLM")
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "launched"
    spec = work_dir / "launch.json"
    spec.write_text(
        json.dumps(
            {
                "kind": kind,
                "config": config.model_dump(mode="json"),
                "base": list(base),
                "rows": rows,
                "work_dir": str(work_dir),
                "out": str(out),
                "init_adapter": init_adapter,
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(command(config, spec), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"launched training failed ({done.returncode}): {done.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    model = load_model(base[0], base[1], head=_head(kind), quantization=resolve_quantization(config.quantization))
    return Trained(PeftModel.from_pretrained(model, str(out / "adapter")), metrics)


def _main(spec_path: str) -> None:
    """One launched process: train with the same method function as a one-process run; rank 0 saves."""
    from accelerate import PartialState
    from transformers import set_seed

    from ml.loading import load_model, load_tokenizer, resolve_quantization
    from trainers.config import run_config

    spec = json.loads(Path(spec_path).read_text())
    kind = spec["kind"]
    config: Any = run_config(kind, spec["config"])
    if hasattr(config, "cpu_speedups"):
        # TRL caches precomputed reference log-probs of an in-memory dataset in each process's own temporary
        # directory, where the other ranks do not find it: computed with each batch instead.
        config = config.model_copy(update={"cpu_speedups": False, "precompute_ref_log_probs": False})
    base, revision = spec["base"]
    tokenizer = load_tokenizer(base, revision)
    set_seed(config.seed)
    model = load_model(base, revision, head=_head(kind), quantization=resolve_quantization(config.quantization))
    if kind == "reward":
        from rewards.training import train as method
    else:
        from trainers.execute import METHODS

        method = METHODS[kind]
    trained = method(config, model, tokenizer, spec["rows"], Path(spec["work_dir"]), None, spec["init_adapter"])
    state = PartialState()
    trained.metrics["num_processes"] = state.num_processes
    if state.is_main_process:
        out = Path(spec["out"])
        trained.model.save_pretrained(str(out / "adapter"))
        (out / "metrics.json").write_text(json.dumps(trained.metrics))
    state.wait_for_everyone()


if __name__ == "__main__":
    _main(sys.argv[1])
