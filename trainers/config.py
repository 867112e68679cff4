"""Run configs, one frozen model per method, and the project's model settings.

A run stores its full config (defaults filled in) on its row and in its version's manifest, so the config, the
snapshot and the seed reproduce it. `editloop train --set key=value` and `POST /v1/runs {"config": {...}}` override
fields; unknown fields and bad values are refused naming the field."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from core.errors import InvalidInput
from core.ml import BaseRunConfig
from rewards.config import RewardRunConfig


class DPORunConfig(BaseRunConfig):
    """DPO (TRL DPOTrainer). The reference is the base with the adapter disabled (or, continuing production, the
    production adapter frozen as TRL's `ref` adapter): never a second copy of the model."""

    beta: float = Field(0.1, gt=0, description="Strength of the KL anchor to the reference; higher stays closer.")
    loss_type: list[str] = Field(["sigmoid"], min_length=1, description="TRL DPO loss terms, e.g. ['sigmoid','sft'].")
    loss_weights: list[float] | None = Field(None, description="One weight per loss_type entry (None: all 1).")
    precompute_ref_log_probs: bool = Field(
        True, description="Score the reference once before training instead of at every step (same metrics, faster)."
    )
    pair_kinds: list[Literal["edit_pair", "choice_pair"]] = Field(
        ["edit_pair", "choice_pair"], description="Which preference rows to train on."
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Pairs per forward pass; a step accumulates batch_size / micro_batch_size of them (the same "
        "gradient, less activation memory and padding). None: on a GPU batch_size; on the CPU as many as keep a pass "
        "within ~2M activation elements (tokens x hidden size x layers): the whole batch for a toy model, 1-2 pairs "
        "from ~25M parameters up.",
    )

    @field_validator("micro_batch_size")
    @classmethod
    def _divides_batch_size(cls, value: int | None, info: ValidationInfo) -> int | None:
        batch_size = info.data.get("batch_size")
        if value is not None and batch_size and batch_size % value:
            raise ValueError(f"must divide batch_size ({batch_size})")
        return value


class CombinedRunConfig(DPORunConfig):
    """Preference plus supervision on edits: DPO's sigmoid loss with an SFT term on the chosen side (the user's
    final code). Learning from edits works best with both, and the SFT term keeps DPO from collapsing the
    log-probabilities of both sides (see the notes on over-optimisation)."""

    loss_type: list[str] = Field(["sigmoid", "sft"], min_length=2, description="DPO sigmoid + SFT on chosen.")
    loss_weights: list[float] | None = Field([1.0, 0.5], description="Weights of the sigmoid and SFT terms.")
    learning_rate: float = Field(2e-4, gt=0, description="The SFT term tolerates a higher rate than plain DPO.")


class KTORunConfig(BaseRunConfig):
    """KTO (TRL KTOTrainer) on unpaired rows: accepted / final code desirable; rejected / edited originals not."""

    beta: float = Field(0.1, gt=0, description="Strength of the KL anchor to the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Loss weight of desirable rows (raise when they are rarer).")
    undesirable_weight: float = Field(1.0, gt=0, description="Loss weight of undesirable rows.")
    learning_rate: float = Field(2e-4, gt=0, description="LoRA learning rate.")


class SFTRunConfig(BaseRunConfig):
    """Supervised fine-tuning on the users' final code (prompt -> what the user kept); loss on the completion only."""

    learning_rate: float = Field(2e-4, gt=0, description="LoRA learning rate.")


POLICY_CONFIGS: dict[str, type[BaseRunConfig]] = {
    "dpo": DPORunConfig,
    "combined": CombinedRunConfig,
    "kto": KTORunConfig,
    "sft": SFTRunConfig,
}


class PipelineRunConfig(BaseModel):
    """The scheduled loop in one run: snapshot -> reward model -> policy -> evaluation -> version (-> promotion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_kind: Literal["dpo", "combined", "kto", "sft"] = Field("combined", description="Policy training method.")
    reward: dict[str, Any] = Field({}, description="Overrides of the reward run config.")
    policy: dict[str, Any] = Field({}, description="Overrides of the policy run config.")
    train_reward_model: bool = Field(True, description="Train a reward model version first.")


RUN_CONFIGS: dict[str, type[BaseModel]] = {"reward": RewardRunConfig, **POLICY_CONFIGS, "pipeline": PipelineRunConfig}


def run_config(kind: str, overrides: dict[str, Any] | None = None, prefix: str = "config") -> BaseModel:
    """The full config for a run kind, defaults filled in; refuses unknown kinds, fields and bad values."""
    if kind not in RUN_CONFIGS:
        raise InvalidInput(f"kind: {kind!r} is not one of {sorted(RUN_CONFIGS)}")
    try:
        config = RUN_CONFIGS[kind].model_validate(overrides or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{prefix}.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if isinstance(config, PipelineRunConfig):
        run_config("reward", config.reward, f"{prefix}.reward")
        run_config(config.policy_kind, config.policy, f"{prefix}.policy")
    return config


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs (VALUE is JSON, or a bare word) into a dict; dotted keys nest (policy.beta=0.2)."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{item!r}: expected key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = out
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return out


class ModelSettings(BaseModel):
    """A project's model settings (project.settings["model"]): which base it trains, and what the schedule runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model: str | None = Field(None, description="Causal LM by hub id or local path; needed before training.")
    base_revision: str | None = Field(None, description="Hub revision (commit, tag) of the base; recorded on versions.")
    pipeline: dict[str, Any] = Field({}, description="Overrides of the scheduled pipeline run config.")
    auto_promote: Literal["off", "canary", "production"] = Field(
        "off", description="After a scheduled run, move this alias to the new version if the promotion gate passes."
    )
    canary_share: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of `production` requests the gateway serves with `canary`, if set."
    )
    canary_policy: Literal["off", "promote", "rollback", "both"] = Field(
        "off",
        description="From live feedback: promote a canary significantly better than production, roll back one "
        "significantly worse, or both.",
    )
    canary_min_samples: int = Field(
        50, ge=1, description="Generations with feedback each side needs before the canary policy decides."
    )
    canary_alpha: float = Field(0.05, gt=0.0, lt=0.5, description="Significance level of the canary policy's test.")


def model_settings(settings: dict[str, Any] | None) -> ModelSettings:
    try:
        return ModelSettings.model_validate((settings or {}).get("model", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"settings.model.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
