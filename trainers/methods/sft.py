"""SFT on the users' final code: prompt -> what the user kept, loss on the completion only."""

from pathlib import Path
from typing import Any

from ml.trl_run import Progress, Trained, fit, lora_config, planned_steps, start_model, trl_args
from trainers.config import SFTRunConfig
from trainers.data import as_text


def train(
    config: SFTRunConfig,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    work_dir: Path,
    progress: Progress | None = None,
    init_adapter: str | None = None,
) -> Trained:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("no SFT rows (users' final code) in the snapshot's train split")
    dataset = Dataset.from_list(as_text(rows, tokenizer, ("prompt", "completion")))
    steps = planned_steps(config, len(dataset))
    # No packing: its default (bfd, padding-free) is 3-4x slower per token without FlashAttention.
    args = trl_args(SFTConfig, config, str(work_dir), steps, packing=False, completion_only_loss=True)
    model, continuing = start_model(model, init_adapter)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=None if continuing else lora_config(config, "CAUSAL_LM"),
    )
    metrics = fit(trainer, progress, config.batch_size)
    metrics["train_examples"] = len(dataset)
    return Trained(trainer.model, metrics)
