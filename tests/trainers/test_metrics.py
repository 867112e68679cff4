"""Evaluation metrics: the statistics on known numbers, the model-running parts on a tiny random Llama built here."""

import copy
import importlib.util
import random

import pytest

from trainers import evaluation as ev

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

ML = all(importlib.util.find_spec(name) for name in ("torch", "transformers", "peft", "tokenizers"))
needs_ml = pytest.mark.skipif(not ML, reason="needs the train extras (torch, transformers, peft)")
if ML:
    import torch

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


@pytest.fixture(scope="module")
def tiny() -> dict:
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


def _peft(lm, perturb: bool):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        copy.deepcopy(lm), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator))
    return model


# --- statistics ---------------------------------------------------------------------------------------------------


def test_normalized_edit_distance() -> None:
    assert ev.normalized_edit_distance("abc", "abc") == 0.0
    assert ev.normalized_edit_distance("abc", "xyz") == 1.0
    assert ev.normalized_edit_distance("", "") == 0.0
    assert ev.normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)


def test_mean_ci_covers_mean_narrows_and_is_seeded() -> None:
    rng = random.Random(3)
    small = [rng.gauss(1.0, 1.0) for _ in range(20)]
    large = [rng.gauss(1.0, 1.0) for _ in range(500)]
    ci_small, ci_large = ev.mean_ci(small), ev.mean_ci(large)
    assert ci_small["n"] == 20
    assert ci_small["low"] < ci_small["mean"] < ci_small["high"]
    assert ci_large["low"] < ci_large["mean"] < ci_large["high"]
    assert ci_large["high"] - ci_large["low"] < ci_small["high"] - ci_small["low"]
    assert ev.mean_ci(small, seed=7) == ev.mean_ci(small, seed=7)
    assert ev.mean_ci(small, seed=7) != ev.mean_ci(small, seed=8)
    assert ev.mean_ci([]) == {"mean": None, "low": None, "high": None, "n": 0}
    assert ev.mean_ci([0.25]) == {"mean": 0.25, "low": 0.25, "high": 0.25, "n": 1}
    assert ev.mean_ci([0.1] * 10)["low"] == pytest.approx(0.1)


def test_paired_difference_sign_and_significance() -> None:
    rng = random.Random(5)
    b = [rng.random() for _ in range(60)]
    a = [x + 0.3 + rng.gauss(0, 0.05) for x in b]
    higher = ev.paired_difference(a, b)
    assert higher["mean"] == pytest.approx(0.3, abs=0.03)
    assert higher["low"] > 0 and higher["significant"] == "better"
    assert higher["p_value"] < 0.01
    assert "paired bootstrap, 2000 resamples, 95%" in higher["test"]
    # the same samples, where lower is better (distances): a is worse
    assert ev.paired_difference(a, b, higher_is_better=False)["significant"] == "worse"
    assert ev.paired_difference(b, a)["significant"] == "worse"
    assert ev.paired_difference(b, a)["mean"] == pytest.approx(-higher["mean"])

    same = ev.paired_difference(b, b)
    assert same["mean"] == 0.0 and same["significant"] is None and same["p_value"] == 1.0
    noise = [x + rng.gauss(0, 0.1) for x in b]
    assert ev.paired_difference(noise, b)["significant"] is None
    with pytest.raises(ValueError):
        ev.paired_difference([1.0], [1.0, 2.0])


def test_paired_difference_exact_p_value_for_small_samples() -> None:
    # 5 positive differences: only the all-positive and all-negative sign patterns are as extreme, p = 2/32
    result = ev.paired_difference([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert result["p_value"] == pytest.approx(2 / 32)
    assert "exact" in result["test"]


def test_parse_rate() -> None:
    # Which texts are Python: tests/feedback/test_syntax.py, test_is_python_rule.
    assert ev.parse_rate(["x = 1\n", "def f(:\n", "print('\\d')"]) == {"rate": pytest.approx(2 / 3), "n": 3}
    assert ev.parse_rate([]) == {"rate": None, "n": 0}
    assert ev.parse_rate(["x = '\0'"])["n"] == 1


def test_preference_baselines() -> None:
    result = ev.preference_baselines(["long one", "a", "same"], ["short", "bb", "four"])
    assert result == {"longer_wins": pytest.approx(1.5 / 3), "shorter_wins": pytest.approx(1.5 / 3), "n": 3}
    assert ev.preference_baselines(["aaa", "bbbb"], ["a", "b"])["longer_wins"] == 1.0
    assert ev.preference_baselines([], [])["longer_wins"] is None


def test_edit_replay_and_compare() -> None:
    finals = ["return a + b", "return sum(items)", "pass", "x = 1"]
    good = ev.edit_replay(["return a + b", "return sum(item)", "pass", "x = 1"], finals)
    bad = ev.edit_replay(["while True:", "import os", "raise", "y"], finals)
    assert good["distances"][0] == 0.0 and good["exact_match"] == 0.75 and good["n"] == 4
    assert good["mean"] < bad["mean"]
    compared = ev.compare_replay(good, {"base": bad, "production": good})
    assert compared["base"]["mean"] < 0  # candidate - base: closer to what users kept
    assert compared["production"]["mean"] == 0.0 and compared["production"]["significant"] is None
    many_finals = [f"value_{i} = compute({i})" for i in range(40)]
    near = ev.edit_replay([f"value_{i} = compute({i})" for i in range(40)], many_finals)
    far = ev.edit_replay([f"print({i * 7})" for i in range(40)], many_finals)
    assert ev.compare_replay(near, {"base": far})["base"]["significant"] == "better"
    assert ev.compare_replay(far, {"base": near})["base"]["significant"] == "worse"


# --- models --------------------------------------------------------------------------------------------------------


@needs_ml
def test_reward_scores_shape_determinism_and_padding(tiny) -> None:
    tok, reward = tiny["tok"], tiny["reward"]
    texts = [p + c for p, c in zip(PROMPTS, CHOSEN, strict=True)]
    scores = ev.reward_scores(reward, tok, texts, batch_size=3)
    assert len(scores) == len(texts) and all(isinstance(s, float) for s in scores)
    assert ev.reward_scores(reward, tok, texts, batch_size=2) == pytest.approx(scores, abs=1e-5)
    alone = ev.reward_scores(reward, tok, ["x = 1\n"])[0]
    batched = ev.reward_scores(reward, tok, ["x = 1\n", "def long(a, b, c):\n    return [a for a in b if c]\n" * 3])[0]
    assert abs(alone - batched) < 1e-4
    # the eos is appended once, as RewardTrainer does
    assert ev.reward_scores(reward, tok, ["x = 1\n" + tok.eos_token])[0] == pytest.approx(alone, abs=1e-6)
    reward.train()
    assert ev.reward_scores(reward, tok, ["x = 1\n"])[0] == pytest.approx(alone, abs=1e-6)
    assert reward.training  # scoring runs in eval mode and gives the caller's mode back
    reward.eval()


@needs_ml
def test_reward_scores_through_a_peft_model(tiny) -> None:
    from peft import LoraConfig, get_peft_model

    tok, reward = tiny["tok"], tiny["reward"]
    texts = [p + c for p, c in zip(PROMPTS, CHOSEN, strict=True)]
    wrapped = get_peft_model(
        copy.deepcopy(reward), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"])
    )
    # a fresh LoRA adds zero and the score head is copied: the same scores as the plain model
    assert ev.reward_scores(wrapped, tok, texts) == pytest.approx(ev.reward_scores(reward, tok, texts), abs=1e-6)


@needs_ml
def test_reward_accuracy(tiny) -> None:
    tok, reward = tiny["tok"], tiny["reward"]
    result = ev.reward_accuracy(reward, tok, PROMPTS, CHOSEN, REJECTED)
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert set(result["outcomes"]) <= {0.0, 0.5, 1.0}
    chosen = ev.reward_scores(reward, tok, [p + c for p, c in zip(PROMPTS, CHOSEN, strict=True)])
    rejected = ev.reward_scores(reward, tok, [p + r for p, r in zip(PROMPTS, REJECTED, strict=True)])
    assert result["outcomes"] == [1.0 if c > r else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert result["mean_margin"] == pytest.approx(sum(margins) / 4, abs=1e-5)
    assert result["baselines"] == ev.preference_baselines(CHOSEN, REJECTED)
    # the same pairs as full texts (implicit prompt) score the same
    implicit = ev.reward_accuracy(
        reward,
        tok,
        None,
        [p + c for p, c in zip(PROMPTS, CHOSEN, strict=True)],
        [p + r for p, r in zip(PROMPTS, REJECTED, strict=True)],
    )
    assert implicit["mean_margin"] == pytest.approx(result["mean_margin"], abs=1e-5)


@needs_ml
def test_completion_logps_matches_a_manual_computation(tiny) -> None:
    tok, lm = tiny["tok"], tiny["lm"]
    # the prompt ends on a token boundary here ("\n" followed by indentation would merge into one token)
    prompt, completion = "def add(a, b):", "\n    return a + b\n"
    prompt_ids = tok(prompt)["input_ids"]
    full_ids = tok(prompt + completion + tok.eos_token)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids and full_ids[-1] == tok.eos_token_id
    with torch.no_grad():
        logprobs = torch.log_softmax(lm(torch.tensor([full_ids])).logits[0].float(), dim=-1)
    manual = sum(logprobs[t - 1, full_ids[t]].item() for t in range(len(prompt_ids), len(full_ids)))
    got = ev.completion_logps(lm, tok, [prompt, "x"], [completion, "= [a for a in b]\n" * 4], batch_size=2)
    assert got[0] == pytest.approx(manual, abs=1e-4)
    assert got[1] < 0


@needs_ml
def test_split_prompt_completions_handles_a_token_merged_across_the_boundary(tiny) -> None:
    tok = tiny["tok"]
    prompt, completion = "def total(items):\n", "    return sum(items)\n"  # "\n" + indentation is one token
    prompt_ids, (completion_ids,) = ev.split_prompt_completions(tok, prompt, [completion])
    assert prompt_ids + completion_ids == tok(prompt + completion + tok.eos_token)["input_ids"]
    assert len(prompt_ids) < len(tok(prompt)["input_ids"])


@needs_ml
def test_implicit_reward_is_zero_for_a_fresh_adapter(tiny) -> None:
    fresh = _peft(tiny["lm"], perturb=False)
    result = ev.implicit_reward_accuracy(fresh, tiny["tok"], PROMPTS, CHOSEN, REJECTED, beta=0.1)
    assert result["accuracy"] == 0.5 and result["mean_margin"] == 0.0 and result["ties"] == 4
    assert result["chosen_reward"] == 0.0 and result["rejected_reward"] == 0.0


@needs_ml
def test_implicit_reward_with_a_trained_looking_adapter(tiny) -> None:
    tok, lm = tiny["tok"], tiny["lm"]
    model = _peft(lm, perturb=True)
    result = ev.implicit_reward_accuracy(model, tok, PROMPTS, CHOSEN, REJECTED, beta=0.1, batch_size=3)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["n"] == 4 and result["ties"] == 0
    assert result["mean_margin"] != 0.0
    policy = ev.completion_logps(model, tok, PROMPTS, CHOSEN)
    base = ev.completion_logps(lm, tok, PROMPTS, CHOSEN)  # the untouched base is the reference
    expected = sum(0.1 * (p - b) for p, b in zip(policy, base, strict=True)) / 4
    assert result["chosen_reward"] == pytest.approx(expected, abs=1e-4)


@needs_ml
def test_implicit_reward_against_a_reference_adapter(tiny) -> None:
    # DPOTrainer handed a PeftModel freezes a copy of its adapter as "ref": that copy is then the reference
    model = _peft(tiny["lm"], perturb=True)
    model.add_adapter("ref", model.peft_config["default"])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".default." in name:
                model.get_parameter(name.replace(".default.", ".ref.")).copy_(param)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    result = ev.implicit_reward_accuracy(
        model, tiny["tok"], PROMPTS, CHOSEN, REJECTED, beta=0.1, reference_adapter="ref"
    )
    assert result["mean_margin"] == 0.0 and result["ties"] == 4
    assert model.active_adapter == "default"
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    with pytest.raises(ValueError):
        ev.implicit_reward_accuracy(model, tiny["tok"], PROMPTS, CHOSEN, REJECTED, beta=0.1, reference_adapter="x")


@needs_ml
def test_generate_is_deterministic_batch_invariant_and_can_bypass_the_adapter(tiny) -> None:
    tok, lm = tiny["tok"], tiny["lm"]
    one_by_one = [ev.generate(lm, tok, [p], max_new_tokens=12)[0] for p in PROMPTS]
    batched = ev.generate(lm, tok, PROMPTS, max_new_tokens=12, batch_size=4)
    assert batched == one_by_one
    assert ev.generate(lm, tok, PROMPTS, max_new_tokens=12, batch_size=4) == batched
    assert all(isinstance(g, str) for g in batched) and any(batched)
    assert not any(tok.eos_token in g or tok.pad_token in g for g in batched)

    model = _peft(lm, perturb=True)
    assert ev.generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=4, adapter_disabled=True) == batched
    assert ev.generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=4) != batched
    with pytest.raises(TypeError):
        ev.generate(lm, tok, PROMPTS[:1], max_new_tokens=2, adapter_disabled=True)
