"""Serving fixtures: a random tiny model and real LoRA adapters for it, registered as versions of a project."""

import uuid
from pathlib import Path
from typing import Any

import pytest

from core import artifacts
from core.db import session_scope
from trainers import registry

from ..trainers.tiny import random_model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def serving_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama whose tokenizer has a ChatML template, so chat requests work too."""
    from transformers import AutoTokenizer

    path = random_model(tmp_path_factory.mktemp("serving") / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)
    return path


def lora_dir(model_dir: Path, out: Path, seed: int) -> Path:
    """A real PEFT adapter for `model_dir` with random (not zero) weights, so that it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def register_adapter(
    db_url: str,
    root: Path,
    project_id: int,
    model_dir: Path,
    seed: int,
    kind: str = "policy",
    metrics: dict[str, Any] | None = None,
) -> str:
    """Publish a random adapter as the project's next version; returns its name."""
    staging = artifacts.staging_dir(root / "staging", f"serving-{uuid.uuid4().hex[:6]}")
    lora_dir(model_dir, staging, seed)
    with session_scope(db_url) as session:
        version = registry.register(
            session,
            root,
            project_id,
            staging,
            kind=kind,
            method="sft" if kind == "policy" else "reward",
            run_id=None,
            snapshot=None,
            parent=None,
            base_model=str(model_dir),
            base_revision=None,
            config={"seed": seed},
            metrics=metrics or {},
        )
        return version.name
