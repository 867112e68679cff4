"""Plumbing shared by every training and scoring module: the offline environment, run-config fields common to all
methods (LoRA, quantization, seed, steps), quantization gating, and a progress hook for TRL trainers.

Nothing here imports torch at module import time: the collector imports `core` and must start in a second."""

import importlib.metadata
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes")

# Progress hook: (step, total_steps, metrics) -> None. Returning True asks the trainer to stop.
Progress = Callable[[int, int, dict[str, float]], bool | None]


ONEDNN_CACHE_VAR = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def offline_env() -> None:
    """The process environment of training and scoring. They never reach the network at run time: models come from
    paths (or the user's HF cache). oneDNN, which runs the CPU's bf16 matmuls (trainers/methods/dpo.py), keeps 8
    primitives instead of 1,024: it makes one per matmul shape, and sequence lengths vary, so the default cache grew
    resident memory by ~250 MB in a 40-step DPO run on a 26M model, and 8 measured no slower. oneDNN reads the
    variable once, at its first primitive: so this runs before any model does."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("EDITLOOP_ALLOW_DOWNLOADS", "") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # per-map bars flood worker logs
    os.environ.setdefault(ONEDNN_CACHE_VAR, "8")


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, far slower."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, present in torch 2.x
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


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
    eval_examples: int = Field(64, ge=0, description="Eval-split examples used by the evaluation (0: skip it).")
    eval_max_new_tokens: int = Field(128, ge=1, description="Tokens generated per prompt in the edit replay.")


def resolve_quantization(mode: str) -> str:
    """The quantization a run really gets. 'auto' means 4-bit only with CUDA: on CPU bitsandbytes works but is the
    less-trodden path (autograd fallbacks), so an explicit '4bit'/'8bit' is needed to use it there."""
    if mode == "none":
        return "none"
    import torch

    cuda = torch.cuda.is_available()
    if mode == "auto":
        mode = "4bit" if cuda else "none"
    if mode == "none":
        return mode
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"quantization={mode} needs bitsandbytes>=0.46.1: pip install 'bitsandbytes>=0.46.1'")
    import bitsandbytes as bnb

    wanted = {"cuda"} if cuda else {"cpu"}
    if not set(getattr(bnb, "supported_torch_devices", ())) & wanted:
        raise RuntimeError(f"quantization={mode}: this bitsandbytes build supports none of {sorted(wanted)}")
    return mode


def quantization_config(mode: str) -> Any:
    """A BitsAndBytesConfig for a resolved mode, or None."""
    if mode == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
    )


def set_threads() -> None:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


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


def load_tokenizer(name: str, revision: str | None = None) -> Any:
    """The base's tokenizer. Without a pad token, eos pads (TRL does the same); a distinct one is better."""
    offline_env()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str, revision: str | None = None, *, head: Literal["causal", "reward"] = "causal", quantization: str = "none"
) -> Any:
    """The base model by hub id or local path, as a causal LM or as a one-logit sequence classifier (the reward
    model's body), optionally quantized (a resolved mode: none | 4bit | 8bit)."""
    offline_env()
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"revision": revision}
    qc = quantization_config(quantization)
    if qc is not None:
        kwargs["quantization_config"] = qc
    if head == "reward":
        return AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)


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
    import torch

    cuda = torch.cuda.is_available()
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
        per_device_train_batch_size=config.batch_size,
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
