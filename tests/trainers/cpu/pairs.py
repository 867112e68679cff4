"""What the tests of the DPO CPU speedups share: our packed DPOTrainer on a few style pairs, a collated batch, and the
call TRL makes on it for the log-probs."""

import random
from pathlib import Path
from typing import Any

from demo.corpus import style_pair

TOLERANCE = 1e-4  # per-sequence log-probs are sums of ~70 fp32 terms


PROMPTS = [
    "# find the cheapest item\n",
    "# a much longer prompt than the others, so that the prompts of one batch differ in length\n# sort them\n",
    "# x\n",
    "# count the urgent devices with a low cost\n",
]


def preference_trainer(
    model: Any, tokenizer: Any, prompts: list[str], tmp_path: Path, bf16_reference: bool = False
) -> Any:
    """Our DPOTrainer subclass around `model`, with a LoRA whose B matrices are random (so the adapter is not a
    no-op and the gradients reach every LoRA weight), on style pairs whose prompts are `prompts`."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    from trainers.cpu.packing import shared_prefix_trainer

    rng = random.Random(0)
    rows = []
    for prompt in prompts:
        _, chosen, rejected = style_pair(rng, "type_hints", True)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    args = DPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        precompute_ref_log_probs=False,
        activation_checkpointing=False,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = shared_prefix_trainer(bf16_reference=bf16_reference)(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return trainer


def batch_of(trainer: Any) -> dict[str, Any]:
    dataset = trainer.train_dataset
    return trainer.data_collator([dataset[i] for i in range(len(dataset))])


def model_call(batch: dict[str, Any]) -> dict[str, Any]:
    """The call TRL makes for the policy's and the reference's log-probs."""
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": labels,
        "fused_lm_head": True,
        "use_cache": False,
    }


def log_probs_and_grads(model: Any, call: Any, kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    model.zero_grad()
    outputs = call(**kwargs)
    sequences = outputs.log_probs.sum(dim=1)
    sequences.sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return outputs, sequences.detach(), grads
