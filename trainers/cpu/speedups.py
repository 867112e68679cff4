"""DPO's CPU speedups, behind one switch: `DPORunConfig.cpu_speedups` (on by default; never on CUDA). With the switch
off, or on CUDA, a run is TRL's DPOTrainer as it is. Each speedup leaves the loss as it was; why each exists:

- micro-batches: a step's pairs go through the model as many at a time as keep one pass within
  CPU_ACTIVATION_BUDGET activation elements (gradient accumulation: the same gradient), so activations stay small
  whatever the model;
- shared-prefix packing (`packing`): each pair's prompt runs once, and chosen and rejected no longer pad each other;
- a bf16 frozen base (`cpu_bf16_base`), where the CPU multiplies bf16 natively and the model is wide enough to gain:
  bf16 matmuls are faster there; the reference precompute then runs under a bf16 autocast, as TRL's default bf16
  runs everything, and packed rows are padded to a few widths, so that oneDNN makes few matmul primitives;
- TRL's and PEFT's internals patched for the CPU's eager torch (`patches`);
- glibc's heap kept steady for the run, and with a bf16 base the idle fp32 weights of the frozen layers handed back
  to their checkpoint file (`host_memory`)."""

import contextlib
from collections.abc import Iterator
from typing import Any

from ml.environment import native_bf16_cpu
from trainers.config import DPORunConfig
from trainers.cpu.host_memory import page_out_file_backed, steady_heap
from trainers.cpu.packing import BF16_SPAN_MULTIPLE, shared_prefix_trainer
from trainers.cpu.patches import (
    bf16_frozen_linears,
    bf16_head_under_autocast,
    fused_lora_add,
    logprob_tiles,
    score_labelled_positions_only,
)

CPU_ACTIVATION_BUDGET = 2**21  # tokens x hidden size x layers in one forward pass on the CPU
CPU_LOGPROB_TILE_TOKENS = 128  # tokens per tile of TRL's head (its default: 4096)
CPU_BF16_MIN_HIDDEN = 192  # auto: a narrower base stays fp32 (its matmuls are too small to gain)


class DPOSpeedups:
    """The CPU speedups of one DPO run, or none of them (on CUDA, or with `cpu_speedups` off)."""

    def __init__(self, config: DPORunConfig, model: Any) -> None:
        import torch

        self.on = config.cpu_speedups and not torch.cuda.is_available()
        self.bf16_base = self.on and _cpu_bf16_base(config.cpu_bf16_base, model)
        self.paged_out = 0

    @property
    def metrics(self) -> dict[str, Any]:
        return {
            "cpu_speedups": self.on,
            "cpu_bf16_base": self.bf16_base,
            "paged_out_mb": round(self.paged_out / 2**20, 1),
        }

    def micro_batch(self, batch_size: int, model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> int:
        """Pairs per forward pass: the whole batch, or on the CPU the most (a divisor of batch_size) whose tokens x
        hidden size x layers stay within CPU_ACTIVATION_BUDGET, the pair length estimated on a sample (prompt + the
        longer completion, both sides)."""
        if not self.on:
            return batch_size
        text_config = model.config.get_text_config()
        width = getattr(text_config, "hidden_size", 0) * getattr(text_config, "num_hidden_layers", 0)
        sample = [r["prompt"] + max(r["chosen"], r["rejected"], key=len) for r in records[:64]]
        lengths = [len(ids) for ids in tokenizer(sample)["input_ids"]]
        per_pair = 2 * width * max(1, sum(lengths) // len(lengths))
        fits = CPU_ACTIVATION_BUDGET // per_pair if width else 2
        return max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and (d <= fits or d == 1))

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[type]:
        """For the duration, the speedups in place (TRL's internals, the model's frozen layers, the heap): yields the
        DPOTrainer class to build the run's trainer from. Everything is put back after."""
        from trl import DPOTrainer

        if not self.on:
            yield DPOTrainer
            return
        with contextlib.ExitStack() as stack:
            stack.enter_context(steady_heap())
            stack.enter_context(logprob_tiles(CPU_LOGPROB_TILE_TOKENS))
            stack.enter_context(score_labelled_positions_only())
            frozen = stack.enter_context(bf16_frozen_linears(model)) if self.bf16_base else []
            yield self._trainer_class(model, frozen)

    def _trainer_class(self, model: Any, frozen: list[Any]) -> type:
        """TRL's DPOTrainer with packed pairs; with a bf16 base, the bf16 head copy for the reference precompute (in
        the constructor), and the frozen layers' fp32 weights paged out once it is done."""
        speedups = self
        span_multiple = BF16_SPAN_MULTIPLE if self.bf16_base else 1

        class CPUDPOTrainer(shared_prefix_trainer(span_multiple, self.bf16_base)):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                head = bf16_head_under_autocast(model) if speedups.bf16_base else contextlib.nullcontext()
                with head:
                    super().__init__(*args, **kwargs)
                # From here on the frozen layers run from their bf16 copies only (policy and reference alike): their
                # fp32 weights can wait on the checkpoint they are mapped from, and fault back in when read after.
                speedups.paged_out = page_out_file_backed(module.weight for module in frozen)

            def train(self, *args: Any, **kwargs: Any) -> Any:
                with fused_lora_add(self.model):
                    return super().train(*args, **kwargs)

        return CPUDPOTrainer


def _cpu_bf16_base(setting: str, model: Any) -> bool:
    """Whether the frozen base multiplies in bf16 on this CPU: `on`, `off`, or (`auto`) where the CPU multiplies bf16
    natively and the model is at least CPU_BF16_MIN_HIDDEN wide (narrower, its matmuls are too small to gain)."""
    if setting != "auto":
        return setting == "on"
    hidden = getattr(model.config.get_text_config(), "hidden_size", 0) or 0
    return hidden >= CPU_BF16_MIN_HIDDEN and native_bf16_cpu()
