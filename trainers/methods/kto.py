"""KTO on unpaired rows (accepted / final code desirable; rejected and edited originals undesirable)."""

from pathlib import Path
from typing import Any

from ml.trl_run import Progress, Trained, fit, lora_config, planned_steps, start_model, trained_adapter_only, trl_args
from trainers.config import KTORunConfig
from trainers.data import as_text


def train(
    config: KTORunConfig,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    work_dir: Path,
    progress: Progress | None = None,
    init_adapter: str | None = None,
) -> Trained:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    records = as_text(rows, tokenizer, ("prompt", "completion", "label"))
    labels = {bool(r["label"]) for r in records}
    if labels != {True, False}:
        raise ValueError("KTO needs both desirable and undesirable rows in the snapshot's train split")
    dataset = Dataset.from_list(records)
    steps = planned_steps(config, len(dataset))
    args = trl_args(
        KTOConfig,
        config,
        str(work_dir),
        steps,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
    )
    model, continuing = start_model(model, init_adapter)
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if continuing else lora_config(config, "CAUSAL_LM"),
    )
    metrics = fit(trainer, progress, config.batch_size)
    metrics["train_examples"] = len(dataset)
    return Trained(trained_adapter_only(trainer.model), metrics)
