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
- on the CPU TRL's log-prob head folds 128 tokens at a time instead of 4096: its torch fallback materializes several
  fp32 [tokens, vocab] temporaries per tile, the largest allocations of a step (and a fifth of its time on the tiny
  model).
Kept as it was: fp32 on the CPU (bf16 there costs memory through oneDNN's per-shape kernels, or hits slow paths)."""

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.ml import Progress, Trained, fit, lora_config, planned_steps, start_model, trained_adapter_only, trl_args
from trainers.config import DPORunConfig
from trainers.data import as_text

CPU_ACTIVATION_BUDGET = 2**21  # tokens x hidden size x layers in one forward pass on the CPU
CPU_LOGPROB_TILE_TOKENS = 128


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
    with contextlib.nullcontext() if cuda else _logprob_tiles(CPU_LOGPROB_TILE_TOKENS):
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=None if continuing else lora_config(config, "CAUSAL_LM"),
        )
        tokenized = trainer.train_dataset
        assert isinstance(tokenized, Dataset)  # we passed an in-memory Dataset; TRL maps it to another
        trainer.train_dataset = tokenized.add_column("length", _token_lengths(tokenized))
        metrics = fit(trainer, progress, config.batch_size)
    metrics["train_examples"] = len(records)
    return Trained(trained_adapter_only(trainer.model), metrics)


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
def _logprob_tiles(tokens: int) -> Iterator[None]:
    """TRL's chunked log-prob head with `tokens` per tile for the duration (a module constant; restored after)."""
    try:
        from trl.kernels import chunked_logprob as kernel
    except ImportError:  # another TRL layout: its own default applies
        yield
        return
    previous = getattr(kernel, "TOKEN_CHUNK_SIZE", None)
    if previous is None:
        yield
        return
    kernel.TOKEN_CHUNK_SIZE = tokens
    try:
        yield
    finally:
        kernel.TOKEN_CHUNK_SIZE = previous
