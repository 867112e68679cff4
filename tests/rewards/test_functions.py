"""Reward-model scoring (rewards.functions.reward_scores) on a tiny random reward model."""

import copy

import pytest

from rewards import functions as fn
from tests.tiny_llama import CHOSEN, PROMPTS, needs_ml, tiny_models

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def tiny() -> dict:
    return tiny_models()


@needs_ml
def test_reward_scores_shape_determinism_and_padding(tiny) -> None:
    tok, reward = tiny["tok"], tiny["reward"]
    texts = [p + c for p, c in zip(PROMPTS, CHOSEN, strict=True)]
    scores = fn.reward_scores(reward, tok, texts, batch_size=3)
    assert len(scores) == len(texts) and all(isinstance(s, float) for s in scores)
    assert fn.reward_scores(reward, tok, texts, batch_size=2) == pytest.approx(scores, abs=1e-5)
    alone = fn.reward_scores(reward, tok, ["x = 1\n"])[0]
    batched = fn.reward_scores(reward, tok, ["x = 1\n", "def long(a, b, c):\n    return [a for a in b if c]\n" * 3])[0]
    assert abs(alone - batched) < 1e-4
    # the eos is appended once, as RewardTrainer does
    assert fn.reward_scores(reward, tok, ["x = 1\n" + tok.eos_token])[0] == pytest.approx(alone, abs=1e-6)
    reward.train()
    assert fn.reward_scores(reward, tok, ["x = 1\n"])[0] == pytest.approx(alone, abs=1e-6)
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
    assert fn.reward_scores(wrapped, tok, texts) == pytest.approx(fn.reward_scores(reward, tok, texts), abs=1e-6)
