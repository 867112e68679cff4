"""What every TRL run shares: the common run-config fields, the LoRA config, the trainer arguments, and `fit`,
which trains with a progress hook and returns the figures a version records."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Progress hook: (step, total_steps, metrics) -> None. Returning True asks the trainer to stop.
Progress = Callable[[int, int, dict[str, float]], bool | None]


class BaseRunConfig(BaseModel):
    """Fields every method shares. A run's config, its snapshot and its seed make it reproducible."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="Seeds torch, data order and LoRA init.")
    learning_rate: float = Field(
        1e-4, gt=0, description="LoRA on small models needs 1e-4..1e-3 (TRL's 1e-6 is for full fine-tunes)."
    )
    max_steps: int = Field(100, ge=1, description="Optimizer steps; the run stops after min(max_steps, epochs).")
    epochs: float = Field(3.0, gt=0, description="Passes over the train split at most.")
    batch_size: int = Field(8, ge=1, description="Examples (pairs for preference methods) per optimizer step.")
    max_length: int = Field(512, ge=16, description="Longest prompt+completion in tokens; longer examples are dropped.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get a LoRA: 'all-linear' or a list of module names."
    )
    quantization: Literal["none", "4bit", "8bit", "auto"] = Field(
        "auto",
        description="QLoRA base through bitsandbytes. auto: 4-bit where CUDA is present, full precision on CPU.",
    )
    start_from: Literal["base", "production"] = Field(
        "base", description="Train a fresh adapter on the base, or continue the project's production adapter."
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Data-parallel training processes (one per GPU; on the CPU, gloo). Above 1 the gpu worker launches"
        " them (trainers/distributed.py); batch_size stays the global batch, each process takes batch_size /"
        " num_processes of it.",
    )
    accelerate_config: str | None = Field(
        None,
        description="An `accelerate config` file for the launch (DeepSpeed ZeRO-3 or FSDP for a model that does not"
        " fit one GPU); its num_processes applies unless num_processes is set above 1.",
    )
    eval_examples: int = Field(64, ge=0, description="Eval-split examples used by the evaluation (0: skip it).")
    eval_max_new_tokens: int = Field(128, ge=1, description="Tokens generated per prompt in the edit replay.")


def progress_callback(progress: Progress | None, every_s: float = 2.0) -> Any:
    """A transformers TrainerCallback that reports (step, total, latest logs) at most every `every_s` seconds (and
    at the end), and stops training when the hook returns True (a cancelled run)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.last = 0.0
            self.logs: dict[str, float] = {}

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            for key, value in (logs or {}).items():
                if isinstance(value, int | float):
                    self.logs[key] = float(value)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.monotonic()
            done = state.global_step >= state.max_steps
            if progress is not None and (done or now - self.last >= every_s):
                self.last = now
                if progress(state.global_step, state.max_steps, dict(self.logs)):
                    control.should_training_stop = True

    return _Progress()


def lora_config(config: BaseRunConfig, task_type: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
    )


def planned_steps(config: BaseRunConfig, examples: int) -> int:
    """min(max_steps, epochs over the data), at least one."""
    import math

    per_epoch = max(1, math.ceil(examples / config.batch_size))
    return max(1, min(config.max_steps, math.ceil(config.epochs * per_epoch)))


def trl_args(args_cls: Any, config: BaseRunConfig, out_dir: str, steps: int, **extra: Any) -> Any:
    """The TRL/transformers arguments every method shares, explicit: fp32 on CPU (TRL's bf16 default fails there
    or costs memory), no activation checkpointing (15% slower at these sizes), no checkpoints (a run publishes its
    adapter itself), a log line per step (live metrics)."""
    import os

    import torch

    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))  # launched by trainers/distributed.py: the batch is split
    if config.batch_size % world:
        raise ValueError(f"batch_size: {config.batch_size} does not split over {world} processes")
    return args_cls(
        output_dir=out_dir,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        seed=config.seed,
        data_seed=config.seed,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(10, steps // 10),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size // world,
        max_length=config.max_length,
        **extra,
    )


@dataclass
class Trained:
    """A trained LoRA model still in memory (evaluation uses it before it is published) and its training figures."""

    model: Any
    metrics: dict[str, Any] = field(default_factory=dict)


def fit(trainer: Any, progress: Progress | None, examples_per_step: int) -> dict[str, Any]:
    """Train, and return the figures a version records: steps, seconds, examples/s, the last logged values."""
    from transformers.trainer_callback import PrinterCallback

    callback = progress_callback(progress)
    trainer.add_callback(callback)
    trainer.remove_callback(PrinterCallback)  # logs go to the run row (live metrics), not to stdout
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    steps = int(trainer.state.global_step)
    last = {k: v for k, v in callback.logs.items() if k not in ("epoch", "step")}
    return {
        "steps": steps,
        "train_seconds": round(seconds, 3),
        "examples_per_s": round(steps * examples_per_step / seconds, 3) if seconds else None,
        "train_loss": float(output.training_loss) if output.training_loss is not None else None,
        "last_log": last,
        "loss_curve": [round(float(h["loss"]), 6) for h in trainer.state.log_history if "loss" in h],
    }


def start_model(model: Any, init_adapter: str | None) -> tuple[Any, bool]:
    """The model to hand TRL: the base (TRL wraps it with a fresh LoRA), or the base with a previous adapter loaded
    trainable (continuing production). Returns (model, continuing)."""
    if init_adapter is None:
        return model, False
    from peft import PeftModel

    return PeftModel.from_pretrained(model, init_adapter, is_trainable=True), True


def trained_adapter_only(model: Any) -> Any:
    """Continuing an adapter, TRL adds a frozen `ref` copy of it; only `default` is the result."""
    if hasattr(model, "peft_config") and "ref" in model.peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")
    return model
