"""The reward model's run config: TRL RewardTrainer, sequence classification with LoRA, on a snapshot's pairs."""

from pydantic import Field

from ml.trl_run import BaseRunConfig


class RewardRunConfig(BaseRunConfig):
    learning_rate: float = Field(
        1e-3, gt=0, description="LoRA + score head; 1e-3 converges in ~50 steps on small models."
    )
    max_steps: int = Field(150, ge=1, description="Optimizer steps; the run stops after min(max_steps, epochs).")
    center_rewards_coefficient: float | None = Field(
        0.01, ge=0, description="Pulls mean scores toward zero so the reward scale stays comparable across versions."
    )
