"""DPO, and the combined recipe (DPO + SFT on the chosen side), through TRL's DPOTrainer with LoRA."""

from pathlib import Path
from typing import Any

from core.ml import Progress, Trained, fit, lora_config, planned_steps, start_model, trained_adapter_only, trl_args
from trainers.config import DPORunConfig
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
    from trl import DPOConfig, DPOTrainer

    rows = [r for r in rows if r.get("editloop_kind", "edit_pair") in config.pair_kinds]
    if not rows:
        raise ValueError(f"no preference pairs of kinds {config.pair_kinds} in the snapshot's train split")
    dataset = Dataset.from_list(as_text(rows, tokenizer, ("prompt", "chosen", "rejected")))
    steps = planned_steps(config, len(dataset))
    args = trl_args(
        DPOConfig,
        config,
        str(work_dir),
        steps,
        beta=config.beta,
        loss_type=list(config.loss_type),
        loss_weights=list(config.loss_weights) if config.loss_weights else None,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
    )
    model, continuing = start_model(model, init_adapter)
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if continuing else lora_config(config, "CAUSAL_LM"),
    )
    metrics = fit(trainer, progress, config.batch_size)
    metrics["train_examples"] = len(dataset)
    return Trained(trained_adapter_only(trainer.model), metrics)
