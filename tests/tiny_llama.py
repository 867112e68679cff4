"""A tiny random Llama (a BPE tokenizer trained on a small code corpus, a causal LM and a reward
model head on one config) and four prompt/chosen/rejected pairs of code: what the metric tests run models on."""

import copy
import importlib.util
import random

import pytest

ML = all(importlib.util.find_spec(name) for name in ("torch", "transformers", "peft", "tokenizers"))
needs_ml = pytest.mark.skipif(not ML, reason="needs the train extras (torch, transformers, peft)")

NAMES = ["alpha", "beta", "count", "items", "total", "value", "node", "path", "user", "score"]
PROMPTS = ["def add(a, b):\n", "# sum a list\ndef total(items):\n", "class Node:\n    def __init__(self", "x = "]
CHOSEN = ["    return a + b\n", "    return sum(items)\n", ", value):\n        self.value = value\n", "1\n"]
REJECTED = [
    "    return a+b",
    "    t = 0\n    for i in items:\n        t += i\n    return t\n",
    "):\n        pass\n",
    "2",
]


def _corpus(n: int = 300) -> list[str]:
    rng = random.Random(0)
    docs = []
    for _ in range(n):
        a, b, c = rng.sample(NAMES, 3)
        docs.append(
            rng.choice(
                [
                    f"def {a}_{b}({c}):\n    return {c} + {rng.randint(0, 99)}\n",
                    f"# {a} {b}\ndef {a}({b}, {c}):\n    for x in {b}:\n        {c} += x\n    return {c}\n",
                    f"class {a.title()}:\n    def __init__(self, {b}):\n        self.{b} = {b}\n",
                    f"{a} = [{b} for {b} in {c} if {b}]\n",
                ]
            )
        )
    return docs


def tiny_models() -> dict:
    """A tokenizer, a causal LM and a one-label sequence classifier (a reward model) on one config, seeded."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        LlamaConfig,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|pad|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    lm = AutoModelForCausalLM.from_config(config).eval()
    reward_config = copy.deepcopy(config)
    reward_config.num_labels = 1
    reward = AutoModelForSequenceClassification.from_config(reward_config).eval()
    return {"tok": tok, "lm": lm, "reward": reward}
