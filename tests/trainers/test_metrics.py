"""Offline metrics: the statistics on known numbers, the model-running parts on a tiny random Llama."""

import copy
import random

import pytest

from tests.tiny_llama import CHOSEN, ML, PROMPTS, REJECTED, needs_ml, tiny_models
from trainers import metrics as ev

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

if ML:
    import torch


@pytest.fixture(scope="module")
def tiny() -> dict:
    return tiny_models()


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


def test_guardrail_checks() -> None:
    assert ev.degenerate("def f():\n" + "    return 1\n" * 6)
    assert ev.degenerate("x = 1\n" + "ab" * 20)
    assert not ev.degenerate("def f(a, b):\n    return a + b\n")
    assert not ev.degenerate("x = 1\nx = 1\n")  # a short repeat is code, not a loop
    assert ev.length_shortfall("", "return a + b") == 1.0
    assert ev.length_shortfall("return a", "return a + b") == pytest.approx(1 - 8 / 12)
    assert ev.length_shortfall("return a + b + c", "return a + b") == 0.0
    assert ev.length_shortfall("anything", "   ") == 0.0


def test_edited_region_replay_tells_a_learned_convention_from_none() -> None:
    """A one-character convention in a long function: the whole-text distance barely moves, the region one does."""
    body = "".join(f"    value_{i} = {i} * {i}\n" for i in range(12))
    original = f"def total(items):\n{body}    return value_0\n"
    final = original.replace("def total", "def _total")
    assert ev.edited_windows(original, final) == ["def _total(it"]
    learned = ev.edited_region_replay([final, final], [final, final], [original, original])
    unlearned = ev.edited_region_replay([original, original], [final, final], [original, original])
    assert learned["mean"] == 0.0 and learned["region_match"] == 1.0
    assert unlearned["region_match"] == 0.0
    whole = ev.normalized_edit_distance(original, final)
    assert unlearned["mean"] > 5 * whole  # the region distance shows what the whole-text one dilutes
    # An example the user did not change says nothing about the edit and is left out.
    assert ev.edited_region_replay([original], [original], [original])["n"] == 0
