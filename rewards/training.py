"""The reward model: TRL RewardTrainer on a snapshot's preference pairs, a one-logit sequence classifier whose
LoRA and score head form the adapter (task type SEQ_CLS, so the head is trained and saved, not LoRA'd)."""

from pathlib import Path
from typing import Any

from ml.trl_run import Progress, Trained, fit, lora_config, planned_steps, start_model, trl_args
from rewards.config import RewardRunConfig


def train(
    config: RewardRunConfig,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, str]],
    work_dir: Path,
    progress: Progress | None = None,
    init_adapter: str | None = None,
) -> Trained:
    """`rows`: plain-text prompt/chosen/rejected."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if not rows:
        raise ValueError("no preference pairs in the snapshot's train split")
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = Dataset.from_list(rows)
    steps = planned_steps(config, len(dataset))
    args = trl_args(
        RewardConfig, config, str(work_dir), steps, center_rewards_coefficient=config.center_rewards_coefficient
    )
    model, continuing = start_model(model, init_adapter)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if continuing else lora_config(config, "SEQ_CLS"),
    )
    metrics = fit(trainer, progress, config.batch_size)
    metrics["train_examples"] = len(dataset)
    return Trained(trainer.model, metrics)
