"""DPO, and the combined recipe (DPO + SFT on the chosen side), through TRL's DPOTrainer with LoRA.

Beyond the shared `trl_args`: only the pairs the run will train on are kept (a seeded random subset when max_steps
ends it inside the first epoch), so that the reference precompute skips the rest; the pairs reach TRL sorted by length
and training batches are grouped by length, so that batches carry little padding. On the CPU the run takes the
speedups of `trainers.cpu.speedups` (DPORunConfig.cpu_speedups): the same loss, in less time and memory."""

import random
from pathlib import Path
from typing import Any

from ml.trl_run import Progress, Trained, fit, lora_config, planned_steps, start_model, trained_adapter_only, trl_args
from trainers.config import DPORunConfig
from trainers.cpu.speedups import DPOSpeedups
from trainers.data import as_text


def train(
    config: DPORunConfig,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    work_dir: Path,
    progress: Progress | None = None,
    init_adapter: str | None = None,
) -> Trained:
    from datasets import Dataset
    from trl import DPOConfig

    rows = [r for r in rows if r.get("editloop_kind", "edit_pair") in config.pair_kinds]
    if not rows:
        raise ValueError(f"no preference pairs of kinds {config.pair_kinds} in the snapshot's train split")
    records = as_text(rows, tokenizer, ("prompt", "chosen", "rejected"))
    steps = planned_steps(config, len(records))
    used = _pairs_used(records, steps * config.batch_size, config.seed)
    dataset = Dataset.from_list(sorted(used, key=_text_length))
    cpu = DPOSpeedups(config, model)  # none on CUDA, or with cpu_speedups off
    micro = config.micro_batch_size or cpu.micro_batch(config.batch_size, model, tokenizer, used)
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
        precompute_ref_batch_size=config.batch_size,  # sorted pairs: little padding in the precompute's batches
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # keeps the `length` column for the sampler; the collator reads only its own
    )
    model, continuing = start_model(model, init_adapter)
    with cpu.applied(model) as trainer_class:
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=None if continuing else lora_config(config, "CAUSAL_LM"),
        )
        trainer.train_dataset = _with_token_lengths(trainer.train_dataset)
        metrics = fit(trainer, progress, config.batch_size)
    metrics["train_examples"] = len(records)
    metrics.update(cpu.metrics)
    return Trained(trained_adapter_only(trainer.model), metrics)


def _pairs_used(records: list[dict[str, Any]], needed: int, seed: int) -> list[dict[str, Any]]:
    """All pairs, or (when the run stops inside its first epoch) a seeded random `needed` of them: the sampler would
    draw the same distribution."""
    if needed >= len(records):
        return records
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), needed))]


def _text_length(record: dict[str, Any]) -> int:
    return len(record["prompt"]) + max(len(record["chosen"]), len(record["rejected"]))


def _with_token_lengths(dataset: Any) -> Any:
    """TRL's tokenized pairs with the `length` column that the length-grouped sampler reads: a pair's padded width,
    the prompt plus its longer completion (chosen and rejected share a batch)."""
    columns = (dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
    return dataset.add_column("length", [len(p) + max(len(c), len(r)) for p, c, r in zip(*columns, strict=True)])
