"""DPO, and the combined recipe (DPO + SFT on the chosen side), through TRL's DPOTrainer with LoRA.

How it is configured beyond the shared `trl_args`, each measured with `benchmarks/dpo.py` (see benchmarks/README.md):
- only the pairs the run will train on are kept (a seeded random subset when max_steps ends the run inside the first
  epoch): the sampler would draw the same distribution, and the reference precompute then skips the unused pairs;
- the pairs go to TRL sorted by length and the reference log-probs are precomputed in batch_size batches, so those
  batches carry little padding;
- training batches are grouped by length (transformers' LengthGroupedSampler: random mega-batches, sorted inside),
  which cuts the padding the model runs over (a quarter of the loop's time on the tiny benchmark model);
- on the CPU a step's pairs go through the model a micro-batch at a time (gradient accumulation: the same gradient),
  as many pairs as keep one pass within CPU_ACTIVATION_BUDGET activation elements, so that activations stay tens of
  MB whatever the model (a whole batch for a toy model, 1-2 pairs from ~25M parameters up);
- on the CPU each pair goes through the model as one packed row, the prompt once and chosen and rejected both
  attending to it (`_SharedPrefix`, for the policy's forward and the reference precompute; TRL's loss and metrics
  unchanged): 12% fewer tokens than TRL's prompt + chosen, prompt + rejected rows padded to each other on the
  benchmark's pairs, 1.04-1.18x pairs/s on its 26M model. Not on CUDA, where it is unmeasured: its dense 4D mask
  (span^2 per pair) rules out the flash kernels;
- on the CPU TRL's log-prob head folds 128 tokens at a time instead of 4096: its torch fallback materializes several
  fp32 [tokens, vocab] temporaries per tile, the largest allocations of a step (and a fifth of its time on the tiny
  model), and it projects only the labelled (completion) positions, as TRL does under Triton
  (`_score_labelled_positions_only`; elsewhere TRL scores prompt and padding too): on a Xeon with AMX, 26M model, 100
  steps, the reference precompute took 19.6-20.3 s instead of 23.0 (two interleaved rounds), the loop the same.
- on the CPU each LoRA layer adds its update in one addmm (`_fused_lora_add`) instead of PEFT's matmul, multiply by
  the scaling and add over [tokens, out_features], each again in the backward: on a Xeon with AMX, 26M model, 30
  steps, two interleaved rounds, loop 10.88/10.88 pairs/s instead of 10.46/10.49 and 60 MB lower peak (1,051/1,055
  instead of 1,116/1,113 MB).
- on a CPU with native bf16 (AVX512-BF16 or AMX; `cpu_bf16_base`), the frozen base's linear layers multiply in bf16
  from a bf16 copy of their weights (`_bf16_frozen_linears`), and packed rows are padded to a multiple of 16 tokens.
  On an AVX512-BF16 EPYC (2 cores, 26M model, 40 steps): 1.3x the pairs/s of fp32 at 1.1x its peak (1,106 vs 985
  MB). Padding to 64 tokens lost most of the gain; no padding, and oneDNN's default cache of 1,024 primitives (one per
  matmul shape), cost 1.5x fp32's peak; ml.environment.offline_env caps that cache at 8. By width, on a Xeon with AMX
  (`benchmarks/dpo.py --model`, random Llamas, 40-100 steps, bf16 against fp32): hidden 128 0.97-1.0x the pairs/s at
  +80 MB, 192 1.09x at +58 MB, 256 1.22x, 384 1.34x; so `auto` leaves a base narrower than CPU_BF16_MIN_HIDDEN in fp32.
  Without native bf16 it is emulated, far slower: off there. With it, the reference precompute (forward only, adapter
  off) runs under a bf16 autocast, as TRL's default bf16=True runs everything, each frozen linear from its cached bf16
  copy (autocast would cast the frozen fp32 weight on every call): on the EPYC, 800 pairs, setup 21.6-22.0 s instead
  of 25.1-25.2 (two interleaved rounds); reference log-probs move by ~1e-5 relative. It costs 22-27 MB of the
  training's peak (1,088/1,095 against 1,066/1,068 MB, two interleaved whole runs; not the precompute's own peak,
  which is lower, nor heap it leaves behind: malloc_trim after it gave back ~5 MB).
- with that bf16 base, once the trainer is set up the fp32 weights of the frozen linears are idle: where they are
  pages of the checkpoint's file mapping (transformers maps a checkpoint loaded in its own dtype, as an fp32
  bootstrap model is), they go back to the kernel for the loop (`core.host_memory.page_out_file_backed`) and fault
  back in from the file when read after it. On the EPYC, 26M model: 95 MB; `benchmarks/dpo.py --size small` peaks of
  999-1,026 MB (eight runs, with the steady heap below) against 1,142 before, 0.55-0.58x TRL's.
- on the CPU, glibc's malloc keeps the run's freed memory for reuse (`core.host_memory.steady_heap`) instead of
  returning it to the kernel and faulting it back in: on the EPYC, 800 pairs, the setup took 0.16 million page
  faults instead of 1.8-2.8 million and 15.6-17.0 s instead of 18.8-19.6 (three interleaved rounds), at the same
  peak.
- in that bf16 reference precompute, TRL's head multiplies one bf16 copy of the output embedding
  (`_bf16_head_under_autocast`); under autocast it would cast the fp32 head again for every 128-token tile. On a Xeon
  with AMX, the small model with a 32k vocabulary, 800 pairs, two interleaved rounds: setup 25.7/26.5 s instead of
  30.6/34.8, the same log-probs (the benchmark's 2k vocabulary: ~1.5% of its precompute)."""

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ml.environment import native_bf16_cpu
from ml.trl_run import Progress, Trained, fit, lora_config, planned_steps, start_model, trained_adapter_only, trl_args
from trainers.config import DPORunConfig
from trainers.cpu.host_memory import page_out_file_backed, steady_heap
from trainers.data import as_text

CPU_ACTIVATION_BUDGET = 2**21  # tokens x hidden size x layers in one forward pass on the CPU
CPU_LOGPROB_TILE_TOKENS = 128
BF16_SPAN_MULTIPLE = 16  # packed rows padded to a multiple of this with a bf16 base: few matmul shapes
CPU_BF16_MIN_HIDDEN = 192  # auto: a narrower base stays fp32 (hidden 128: no faster in bf16, +80 MB peak)


def train(
    config: DPORunConfig,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    work_dir: Path,
    progress: Progress | None = None,
    init_adapter: str | None = None,
) -> Trained:
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [r for r in rows if r.get("editloop_kind", "edit_pair") in config.pair_kinds]
    if not rows:
        raise ValueError(f"no preference pairs of kinds {config.pair_kinds} in the snapshot's train split")
    records = as_text(rows, tokenizer, ("prompt", "chosen", "rejected"))
    steps = planned_steps(config, len(records))
    used = _pairs_used(records, steps * config.batch_size, config.seed)
    dataset = Dataset.from_list(sorted(used, key=_text_length))
    cuda = torch.cuda.is_available()
    micro = config.micro_batch_size or (config.batch_size if cuda else _cpu_micro_batch(config, model, tokenizer, used))
    args = trl_args(
        DPOConfig,
        config.model_copy(update={"batch_size": micro}),
        str(work_dir),
        steps,
        gradient_accumulation_steps=config.batch_size // micro,
        beta=config.beta,
        loss_type=list(config.loss_type),
        loss_weights=list(config.loss_weights) if config.loss_weights else None,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
        precompute_ref_batch_size=config.batch_size,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # keeps the `length` column for the sampler; the collator reads only its own
    )
    model, continuing = start_model(model, init_adapter)
    bf16_base = not cuda and _cpu_bf16_base(config.cpu_bf16_base, model)
    frozen: list[Any] = []
    with contextlib.ExitStack() as stack:
        if not cuda:
            stack.enter_context(steady_heap())
            stack.enter_context(_logprob_tiles(CPU_LOGPROB_TILE_TOKENS))
            stack.enter_context(_score_labelled_positions_only())
        if bf16_base:
            frozen = stack.enter_context(_bf16_frozen_linears(model))
        span_multiple = BF16_SPAN_MULTIPLE if bf16_base else 1
        trainer_class = DPOTrainer if cuda else _shared_prefix_trainer(span_multiple, bf16_base)
        with _bf16_head_under_autocast(model) if bf16_base else contextlib.nullcontext():  # the reference precompute
            trainer = trainer_class(
                model=model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=None if continuing else lora_config(config, "CAUSAL_LM"),
            )
        tokenized = trainer.train_dataset
        assert isinstance(tokenized, Dataset)  # we passed an in-memory Dataset; TRL maps it to another
        trainer.train_dataset = tokenized.add_column("length", _token_lengths(tokenized))
        if not cuda:
            stack.enter_context(_fused_lora_add(trainer.model))
        # From here on the frozen layers run from their bf16 copies only (policy and reference alike): their fp32
        # weights can wait on the checkpoint they are mapped from, and fault back in when read after the run.
        paged_out = page_out_file_backed(module.weight for module in frozen)
        metrics = fit(trainer, progress, config.batch_size)
    metrics["train_examples"] = len(records)
    metrics["cpu_bf16_base"] = bf16_base
    metrics["paged_out_mb"] = round(paged_out / 2**20, 1)
    return Trained(trained_adapter_only(trainer.model), metrics)


def _shared_prefix_trainer(span_multiple: int = 1, bf16_reference: bool = False) -> type:
    """TRL's DPOTrainer, with its concatenated forwards (the policy's, and the reference precompute's) run as packed
    pairs (see `_SharedPrefix`; rows padded to a multiple of `span_multiple` tokens); the loss, metrics and logging
    are TRL's own. With `bf16_reference`, the reference log-probs are computed under a bf16 autocast (as TRL's
    default bf16=True computes everything), the policy's as before."""
    import torch
    from trl import DPOTrainer

    class SharedPrefixDPOTrainer(DPOTrainer):
        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
            return super()._compute_loss(_SharedPrefix.wrap(self, model, span_multiple), inputs, return_outputs)

        def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
            wrapped = _SharedPrefix.wrap(self, model, span_multiple)
            if not bf16_reference:
                return super().compute_ref_log_probs(wrapped, inputs)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return super().compute_ref_log_probs(wrapped, inputs)

    return SharedPrefixDPOTrainer


class _SharedPrefix:
    """Stands in for the model in TRL's `model(input_ids, attention_mask, labels, fused_lm_head=True)` call on a
    preference batch (rows [prompt + chosen_i ..., prompt + rejected_i ...], right-padded, labels -100 outside the
    completions). It runs each pair as one row: the prompt but its last token, then that token and the chosen
    completion, then that token again and the rejected completion, with a 4D attention mask (each completion sees the
    prompt and itself, causally) and position ids that restart after the prompt for each completion. So the prompt
    runs once, and chosen and rejected no longer pad each other; the repeated last prompt token predicts the first
    token of each completion. TRL's fused head scores it (`shift_labels`), and the per-token fields come back in TRL's
    layout (zero outside the completions). Any other call, batch or model (distributed wrappers, prompt-learning
    PEFT, MoE router losses, attention other than sdpa/eager, sliding windows or non-attention layers that could
    bind) goes to the model unchanged."""

    ATTENTION = ("sdpa", "eager")  # take a 4D mask as given
    CALL_KEYS = {"input_ids", "attention_mask", "labels", "fused_lm_head", "use_cache"}

    def __init__(self, model: Any, backbone: Any, config: Any, span_multiple: int = 1) -> None:
        self.model, self.backbone, self.config, self.span_multiple = model, backbone, config, span_multiple

    @classmethod
    def wrap(cls, trainer: Any, model: Any, span_multiple: int = 1) -> Any:
        from peft import PeftModel

        if trainer.args.gradient_checkpointing or trainer.accelerator.unwrap_model(model) is not model:
            return model
        if isinstance(model, PeftModel):
            if model.active_peft_config.is_prompt_learning:
                return model
            causal_lm = model.get_base_model()
        else:
            causal_lm = model
        config = getattr(causal_lm, "config", None)
        backbone = getattr(causal_lm, "base_model", None)
        if config is None or backbone is None or backbone is causal_lm or config.get_text_config() is not config:
            return model
        if getattr(config, "_attn_implementation", None) not in cls.ATTENTION:
            return model
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        if not layer_types <= {"full_attention", "sliding_attention"}:
            return model
        return cls(model, backbone, config, span_multiple)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, **kwargs: Any) -> Any:
        if kwargs.get("fused_lm_head") and set(kwargs) <= self.CALL_KEYS and kwargs.get("labels") is not None:
            outputs = self._forward(kwargs["input_ids"], kwargs["attention_mask"], kwargs["labels"])
            if outputs is not None:
                return outputs
        return self.model(**kwargs)

    def _forward(self, input_ids: Any, attention_mask: Any, labels: Any) -> Any:
        """TRL's fused output for the batch through packed pairs, or None where the batch cannot be packed."""
        import torch

        rows, width = input_ids.shape
        pairs = rows // 2
        scored = labels != -100
        lengths = attention_mask.sum(dim=1)
        positions = torch.arange(width, device=input_ids.device)
        starts = scored.int().argmax(dim=1)  # the first completion token: the prompt's length
        packable = (
            rows == 2 * pairs
            and bool(scored.any(dim=1).all())
            and torch.equal(starts[:pairs], starts[pairs:])
            and bool((starts >= 2).all())  # a prefix to share
            and torch.equal(attention_mask.bool(), positions < lengths[:, None])
        )
        if not packable:
            return None
        prefix = starts[:pairs] - 1
        prefix_mask = positions < prefix[:, None]
        if not torch.equal(input_ids[:pairs] * prefix_mask, input_ids[pairs:] * prefix_mask):
            return None
        chosen_end = lengths[:pairs]  # packed: prefix, chosen (from the last prompt token), rejected (likewise)
        packed_lengths = chosen_end + lengths[pairs:] - prefix
        span = -(-int(packed_lengths.max()) // self.span_multiple) * self.span_multiple
        layer_types, window = getattr(self.config, "layer_types", None), getattr(self.config, "sliding_window", None)
        sliding = "sliding_attention" in layer_types if layer_types else window is not None
        if sliding and window is not None and window < span:  # a window that could bind: the 4D mask ignores it
            return None
        at = torch.arange(span, device=input_ids.device)[None, :]
        segment = torch.where(at < prefix[:, None], 0, torch.where(at < chosen_end[:, None], 1, 2))
        segment = torch.where(at < packed_lengths[:, None], segment, 3)  # 3: padding
        pair = torch.arange(pairs, device=input_ids.device)[:, None]
        source_row = torch.where(segment == 2, pair + pairs, pair)
        offset = torch.where(segment == 2, (chosen_end - prefix)[:, None], 0)  # rejected follows the chosen part
        source_position = torch.where(segment == 3, 0, at - offset)
        following = source_position + 1
        scores = (segment == 1) | (segment == 2)
        shift_labels = labels[source_row, following.clamp(max=width - 1)]
        shift_labels = shift_labels.masked_fill(~scores | (following >= lengths[source_row]), -100)
        # A query sees the earlier keys of the prompt and of its own segment (padding sees the prompt and padding).
        allowed = (at[:, :, None] >= at[:, None, :]) & (
            (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])
        )
        if self.config._attn_implementation == "sdpa":  # True attends; whatever dtype autocast gives the queries
            mask = allowed[:, None]
        else:  # eager adds it to the scores
            dtype = self.backbone.get_input_embeddings().weight.dtype
            mask = torch.zeros(allowed.shape, dtype=dtype, device=input_ids.device)
            mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
        outputs = self.model(
            input_ids=input_ids[source_row, source_position],
            attention_mask=mask,
            position_ids=source_position,
            shift_labels=shift_labels,
            fused_lm_head=True,
        )

        # Back to TRL's layout: its row r, position t is packed row r mod pairs, t + (the chosen part for rejected).
        shift = torch.cat([torch.zeros_like(prefix), chosen_end - prefix])[:, None]
        packed_at = (positions[None, : width - 1] + shift).clamp(max=span - 1)
        packed_row = (torch.arange(rows, device=input_ids.device) % pairs)[:, None]
        valid = scored[:, 1:]

        def as_trl(values: Any) -> Any:
            return None if values is None else values[packed_row, packed_at].masked_fill(~valid, 0)

        for field in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask"):
            setattr(outputs, field, as_trl(getattr(outputs, field)))
        return outputs


def _cpu_bf16_base(setting: str, model: Any) -> bool:
    """Whether the frozen base multiplies in bf16 on this CPU: `on`, `off`, or (`auto`) where the CPU multiplies bf16
    natively and the model is at least CPU_BF16_MIN_HIDDEN wide (narrower, its matmuls are too small to gain)."""
    if setting != "auto":
        return setting == "on"
    hidden = getattr(model.config.get_text_config(), "hidden_size", 0) or 0
    return hidden >= CPU_BF16_MIN_HIDDEN and native_bf16_cpu()


def _pairs_used(records: list[dict[str, Any]], needed: int, seed: int) -> list[dict[str, Any]]:
    """All pairs, or (when the run stops inside its first epoch) a seeded random `needed` of them."""
    if needed >= len(records):
        return records
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), needed))]


def _text_length(record: dict[str, Any]) -> int:
    return len(record["prompt"]) + max(len(record["chosen"]), len(record["rejected"]))


def _token_lengths(dataset: Any) -> list[int]:
    """A pair's padded width: the prompt plus its longer completion (chosen and rejected share a batch)."""
    columns = (dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
    return [len(p) + max(len(c), len(r)) for p, c, r in zip(*columns, strict=True)]


def _cpu_micro_batch(config: DPORunConfig, model: Any, tokenizer: Any, records: list[dict[str, Any]]) -> int:
    """Pairs per forward pass: the most (a divisor of batch_size) whose tokens x hidden size x layers stay within
    CPU_ACTIVATION_BUDGET, the pair length estimated on a sample (prompt + the longer completion, both sides)."""
    text_config = model.config.get_text_config()
    width = getattr(text_config, "hidden_size", 0) * getattr(text_config, "num_hidden_layers", 0)
    sample = [r["prompt"] + max(r["chosen"], r["rejected"], key=len) for r in records[:64]]
    lengths = [len(ids) for ids in tokenizer(sample)["input_ids"]]
    per_pair = 2 * width * max(1, sum(lengths) // len(lengths))
    fits = CPU_ACTIVATION_BUDGET // per_pair if width else 2
    return max(d for d in range(1, config.batch_size + 1) if config.batch_size % d == 0 and (d <= fits or d == 1))


@contextlib.contextmanager
def _bf16_frozen_linears(model: Any) -> Iterator[list[Any]]:
    """For the duration, the model's frozen linear layers (all but the LoRA matrices and the output embedding) multiply
    in bf16: a bf16 copy of each weight, the input cast to bf16 and the output back to the input's dtype (under a bf16
    autocast, as the reference precompute runs, left in bf16 as autocast's own linear would leave it). The fp32
    weights stay as they are (evaluation and the published adapter see the model unchanged); a layer whose weight
    requires grad when called, or under another autocast, runs its own forward. Yields the layers it covers."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    patched = []
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or module is output or "lora_" in name:
            continue
        if module.weight.dtype != torch.float32 or "forward" in vars(module):
            continue
        weight = module.weight.detach().to(torch.bfloat16)
        bias = None if module.bias is None else module.bias.detach().to(torch.bfloat16)
        patched.append((module, _bf16_forward(module, weight, bias)))
    with _instance_forwards(patched):
        yield [module for module, _ in patched]


def _bf16_forward(module: Any, weight: Any, bias: Any) -> Any:
    import torch
    import torch.nn.functional as F

    own = type(module).forward

    def forward(x: Any) -> Any:
        if module.weight.requires_grad:
            return own(module, x)
        if torch.is_autocast_enabled(x.device.type):
            if torch.get_autocast_dtype(x.device.type) != torch.bfloat16:
                return own(module, x)
            # What autocast's linear computes, from the cached copy: autocast casts a frozen weight on every call.
            return F.linear(x.to(torch.bfloat16), weight, bias)
        return F.linear(x.to(torch.bfloat16), weight, bias).to(x.dtype)

    return forward


@contextlib.contextmanager
def _bf16_head_under_autocast(model: Any) -> Iterator[bool]:
    """For the duration, TRL's fused log-prob head, where it runs under a bf16 autocast (the reference precompute with
    a bf16 base), multiplies by one bf16 copy of the model's output embedding (made at its first such call, dropped at
    the end) instead of casting each vocabulary chunk of the fp32 weight again for every tile of
    CPU_LOGPROB_TILE_TOKENS tokens: the same bf16 values, so the same log-probs, without re-reading the whole fp32
    head per tile (with a 32k vocabulary that cast cost a fifth of the setup). Any other call (no autocast,
    another dtype, another weight, one that requires grad) goes to TRL's function as it is. Yields whether it could
    (False: another layout of TRL, left as it is)."""
    import importlib

    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight: Any = getattr(output, "weight", None)
    try:
        original: Any = getattr(importlib.import_module("trl.trainer.utils"), "_ChunkedLogProbFunction", None)
    except ImportError:
        original = None
    if weight is None or original is None:
        yield False
        return
    copies: dict[str, Any] = {}

    class Bf16Head:
        @staticmethod
        def apply(hidden: Any, head_weight: Any, bias: Any, *args: Any) -> Any:
            device = head_weight.device.type
            if (
                head_weight is weight
                and not head_weight.requires_grad
                and torch.is_autocast_enabled(device)
                and torch.get_autocast_dtype(device) == torch.bfloat16
            ):
                if not copies:
                    copies["weight"] = weight.detach().to(torch.bfloat16)
                    copies["bias"] = None if bias is None else bias.detach().to(torch.bfloat16)
                head_weight, bias = copies["weight"], copies["bias"]
            return original.apply(hidden, head_weight, bias, *args)

    try:
        with _module_attribute("trl.trainer.utils", "_ChunkedLogProbFunction", Bf16Head) as swapped:
            yield swapped
    finally:
        copies.clear()


@contextlib.contextmanager
def _fused_lora_add(model: Any) -> Iterator[int]:
    """For the duration, each PEFT LoRA `Linear` of `model` adds its update in one `addmm` (the base output, plus
    `scaling` x lora_A(x) @ lora_B.T) where PEFT runs a matmul, a multiplication by `scaling` and an addition over the
    [tokens, out_features] output, each again in the backward. The same sum; an instance `forward`, removed after. Any
    call it does not cover (adapters disabled or merged, several adapters, variants such as DoRA, a bias on lora_B,
    extra arguments, autocast, mixed dtypes) runs PEFT's own forward. Yields how many layers it covers."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    layers = [m for m in model.modules() if isinstance(m, LoraLinear) and "forward" not in vars(m)]
    patched = [(m, _fused_lora_forward(m)) for m in layers]
    with _instance_forwards(patched):
        yield len(patched)


def _fused_lora_forward(module: Any) -> Any:
    import torch

    own = type(module).forward

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        adapters = module.active_adapters
        if args or kwargs or module.disable_adapters or module.merged or len(adapters) != 1:
            return own(module, x, *args, **kwargs)
        name = adapters[0]
        if name not in module.lora_A or name in module.lora_variant or torch.is_autocast_enabled(x.device.type):
            return own(module, x, *args, **kwargs)
        lora_a, lora_b = module.lora_A[name], module.lora_B[name]
        if type(lora_b) is not torch.nn.Linear or lora_b.bias is not None or x.dtype != lora_a.weight.dtype:
            return own(module, x, *args, **kwargs)
        result = module.base_layer(x)
        update = lora_a(module.lora_dropout[name](x))
        if result.dtype != lora_b.weight.dtype:  # PEFT's own sum, in its dtype (the base layer has run already)
            return (result + lora_b(update) * module.scaling[name]).to(result.dtype)
        features = result.shape[-1]
        summed = torch.addmm(
            result.reshape(-1, features),
            update.reshape(-1, update.shape[-1]),
            lora_b.weight.t(),
            alpha=module.scaling[name],
        )
        return summed.view(result.shape)

    return forward


@contextlib.contextmanager
def _score_labelled_positions_only() -> Iterator[bool]:
    """For the duration, TRL's fused head projects only the positions with a label (the completions), on every
    device: TRL does so only where Triton runs (`compact` in `add_fused_lm_head`: elsewhere it scores every position,
    prompt and padding too, so that tile shapes stay fixed for compilers; eager CPU torch has nothing to recompile).
    It decides through `trl.trainer.utils._use_triton`, which that function alone reads there (the kernel keeps its
    own reference, so its tiles still fold in torch). Yields whether it could (False: another TRL layout, left as
    it is)."""
    with _module_attribute("trl.trainer.utils", "_use_triton", lambda device: True) as swapped:
        yield swapped


@contextlib.contextmanager
def _logprob_tiles(tokens: int) -> Iterator[None]:
    """TRL's chunked log-prob head with `tokens` per tile for the duration (a module constant; restored after)."""
    with _module_attribute("trl.kernels.chunked_logprob", "TOKEN_CHUNK_SIZE", tokens):
        yield


@contextlib.contextmanager
def _module_attribute(module_name: str, name: str, value: Any) -> Iterator[bool]:
    """`module_name.name` set to `value` for the duration and restored after. Yields whether it was: False where the
    module or the attribute is missing (another layout of the library: left as it is)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        yield False
        return
    previous = getattr(module, name, None)
    if previous is None:
        yield False
        return
    setattr(module, name, value)
    try:
        yield True
    finally:
        setattr(module, name, previous)


@contextlib.contextmanager
def _instance_forwards(patched: list[tuple[Any, Any]]) -> Iterator[None]:
    """Each (module, forward) pair's `forward` as the module's instance attribute for the duration; removed after, so
    that the class's own forward is back."""
    for module, forward in patched:
        module.forward = forward
    try:
        yield
    finally:
        for module, _ in patched:
            del module.forward
