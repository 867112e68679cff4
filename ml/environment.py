"""The process environment of training and scoring: offline, threads, what the CPU can do, library versions.

Nothing here imports torch at module import time: the collector must start without it."""

import importlib.metadata
import logging
import os

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes")


ONEDNN_CACHE_VAR = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def offline_env() -> None:
    """The process environment of training and scoring. They never reach the network at run time: models come from
    paths (or the user's HF cache). oneDNN, which runs the CPU's bf16 matmuls (trainers/cpu), keeps 8 primitives
    instead of 1,024: it makes one per matmul shape, and sequence lengths vary, so the default cache keeps growing
    resident memory through a run. oneDNN reads the variable once, at its first primitive: so this runs before
    any model does."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("EDITLOOP_ALLOW_DOWNLOADS", "") != "1":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        # Offline, bitsandbytes' try at a Hub kernel for 4-bit CPU matmuls (on AVX512-BF16 CPUs) always fails and it
        # falls back to its own kernel; its two warnings read like an error in every run's output.
        for name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)
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


def set_threads() -> None:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
