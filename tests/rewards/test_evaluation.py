"""Reward-model evaluation: the length baselines on known pairs, reward accuracy on a tiny random reward model."""

import pytest

from rewards import evaluation as ev
from rewards.functions import reward_scores
from tests.tiny_llama import CHOSEN, PROMPTS, REJECTED, needs_ml, tiny_models

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def tiny() -> dict:
    return tiny_models()


def test_preference_baselines() -> None:
    result = ev.preference_baselines(["long one", "a", "same"], ["short", "bb", "four"])
    assert result == {"longer_wins": pytest.approx(1.5 / 3), "shorter_wins": pytest.approx(1.5 / 3), "n": 3}
    assert ev.preference_baselines(["aaa", "bbbb"], ["a", "b"])["longer_wins"] == 1.0
    assert ev.preference_baselines([], [])["longer_wins"] is None


@needs_ml
def test_reward_accuracy(tiny) -> None:
    tok, reward = tiny["tok"], tiny["reward"]
    result = ev.reward_accuracy(reward, tok, PROMPTS, CHOSEN, REJECTED)
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert set(result["outcomes"]) <= {0.0, 0.5, 1.0}
    chosen = reward_scores(reward, tok, [p + c for p, c in zip(PROMPTS, CHOSEN, strict=True)])
    rejected = reward_scores(reward, tok, [p + r for p, r in zip(PROMPTS, REJECTED, strict=True)])
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
