"""Loading a base model and its tokenizer by hub id or local path, optionally quantized through bitsandbytes."""

import importlib.util
from typing import Any, Literal

from ml.environment import offline_env


def resolve_quantization(mode: str) -> str:
    """The quantization a run really gets. 'auto' means 4-bit only with CUDA: on CPU bitsandbytes works but is the
    less-trodden path (autograd fallbacks), so an explicit '4bit'/'8bit' is needed to use it there."""
    if mode == "none":
        return "none"
    import torch

    cuda = torch.cuda.is_available()
    if mode == "auto":
        mode = "4bit" if cuda else "none"
    if mode == "none":
        return mode
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(f"quantization={mode} needs bitsandbytes>=0.46.1: pip install 'bitsandbytes>=0.46.1'")
    import bitsandbytes as bnb

    wanted = {"cuda"} if cuda else {"cpu"}
    if not set(getattr(bnb, "supported_torch_devices", ())) & wanted:
        raise RuntimeError(f"quantization={mode}: this bitsandbytes build supports none of {sorted(wanted)}")
    return mode


def quantization_config(mode: str) -> Any:
    """A BitsAndBytesConfig for a resolved mode, or None."""
    if mode == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
    )


def load_tokenizer(name: str, revision: str | None = None) -> Any:
    """The base's tokenizer. Without a pad token, eos pads (TRL does the same); a distinct one is better."""
    offline_env()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str, revision: str | None = None, *, head: Literal["causal", "reward"] = "causal", quantization: str = "none"
) -> Any:
    """The base model by hub id or local path, as a causal LM or as a one-logit sequence classifier (the reward
    model's body), optionally quantized (a resolved mode: none | 4bit | 8bit)."""
    offline_env()
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"revision": revision}
    qc = quantization_config(quantization)
    if qc is not None:
        kwargs["quantization_config"] = qc
    if head == "reward":
        return AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, **kwargs)
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)
