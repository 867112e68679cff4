"""Run configs, one frozen model per method, and the project's model settings.

A run stores its full config (defaults filled in) on its row and in its version's manifest, so the config, the
snapshot and the seed reproduce it. `editloop train --set key=value` and `POST /v1/runs {"config": {...}}` override
fields; unknown fields and bad values are refused naming the field."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from core.errors import InvalidInput
from ml.trl_run import BaseRunConfig
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
        "gradient, less activation memory and padding). None: batch_size, or with cpu_speedups on the CPU as many as "
        "keep a pass within ~2M activation elements (tokens x hidden size x layers).",
    )
    cpu_speedups: bool = Field(
        True,
        description="On the CPU, train through our speedups of TRL's DPOTrainer (trainers/cpu: shared-prefix "
        "packing, micro-batches, a bf16 frozen base per cpu_bf16_base, TRL and PEFT internals patched, a steady "
        "heap): the same loss in less time and memory. false: TRL's DPOTrainer as it is. Never on CUDA.",
    )
    cpu_bf16_base: Literal["auto", "on", "off"] = Field(
        "auto",
        description="With cpu_speedups on the CPU, the frozen base's linear layers multiply in bf16 (a bf16 copy of "
        "their weights, half their fp32 size again; the LoRA matrices, the loss and the fp32 weights unchanged), and "
        "packed pairs are padded to a multiple of 16 tokens so that few matmul shapes occur. auto: where the CPU has "
        "native bf16 (AVX512-BF16 or AMX; elsewhere bf16 is emulated and far slower) and the model is at least 192 "
        "wide (narrower, its matmuls are too small to gain).",
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
    log-probabilities of both sides."""

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


class OnlineRunConfig(BaseRunConfig):
    """Online RL shared by GRPO and RLOO: the policy (a LoRA) samples `num_generations` completions per prompt from
    the project's logged prompts (the snapshot's eval prompts held out), TRL reward functions score them, and the
    policy moves toward the better ones with a KL anchor to the reference (the base with the adapter disabled; when
    continuing production, the production adapter frozen as TRL's `ref` adapter). The reward is a weighted sum of
    the latest reward model version's score, Python parse validity and a length guard; each is logged separately
    (`rewards/<name>/mean`) so that reward hacking shows."""

    learning_rate: float = Field(
        2e-4,
        gt=0,
        description="LoRA learning rate (TRL's 1e-6 is for full fine-tunes). Higher rates learnt a style rule sooner "
        "on the tiny model but lowered its greedy parse rate (benchmarks/README.md).",
    )
    max_steps: int = Field(40, ge=1, description="Optimizer steps; the run stops after min(max_steps, epochs).")
    batch_size: int = Field(
        8, ge=2, description="Completions per optimizer step (batch_size / num_generations prompts); on CPU 8."
    )
    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt, compared with each other; must divide batch_size."
    )
    max_completion_length: int = Field(
        128,
        ge=1,
        description="Tokens sampled per completion (TRL's 512 is for GPUs: generation dominates a step). Leave room "
        "for whole answers: a cut-off completion is judged as a prefix, so its broken ending goes unseen.",
    )
    temperature: float = Field(
        0.5,
        gt=0,
        description="Sampling temperature of the rollouts. Below 1 for small models: at 1.0 most of the tiny "
        "bootstrap model's samples do not parse, so the rewards would mostly grade noise (benchmarks/README.md).",
    )
    beta: float = Field(
        0.04, ge=0, description="KL coefficient to the reference; 0 drops the reference pass (faster, no anchor)."
    )
    reward_model_weight: float = Field(1.0, ge=0, description="Weight of the reward model's score (a logit).")
    parse_weight: float = Field(
        2.0, ge=0, description="Weight of Python parse validity (1 parses, 0 does not; non-Python prompts: not scored)."
    )
    parse_gate: bool = Field(
        False,
        description="Only code that parses earns the reward model's score: a completion that does not parse gets the "
        "lowest score of its batch (rewards.functions.ParseGated), on top of the parse reward.",
    )
    length_weight: float = Field(1.0, ge=0, description="Weight of the length guard (0 within length_target, to -1).")
    length_target: int = Field(
        112,
        ge=1,
        description="Completion tokens allowed before the length guard bites: 0 up to it, falling linearly to -1 at "
        "twice it; a completion cut off at max_completion_length (no eos) scores -1.",
    )
    prompts: int = Field(
        512, ge=1, description="Most recent logged prompts to practise on (distinct, not in the eval split)."
    )
    use_vllm: bool = Field(False, description="Generate with vLLM (TRL's vllm mode; needs a GPU and the vllm package).")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="vLLM in the training process (colocate) or a `trl vllm-serve` server."
    )
    eval_max_new_tokens: int = Field(160, ge=1, description="Tokens generated per prompt in the evaluation.")

    @field_validator("num_generations")
    @classmethod
    def _divides_batch_size(cls, value: int, info: ValidationInfo) -> int:
        batch_size = info.data.get("batch_size")
        if batch_size and batch_size % value:
            raise ValueError(f"must divide batch_size ({batch_size})")
        return value


class GRPORunConfig(OnlineRunConfig):
    """GRPO (TRL GRPOTrainer): advantages are rewards standardised within each prompt's group of completions."""

    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the reward std of the group, of the batch, or not at all."
    )


class RLOORunConfig(OnlineRunConfig):
    """RLOO (TRL RLOOTrainer): each completion's baseline is the mean reward of the other completions of its prompt."""

    max_steps: int = Field(
        48,
        ge=1,
        description="Optimizer steps; the run stops after min(max_steps, epochs). More than GRPO's: with RLOO's "
        "stronger parse reward a style rule is learnt more slowly (benchmarks/README.md, online RL and syntax).",
    )
    parse_weight: float = Field(
        8.0,
        ge=0,
        description="Weight of Python parse validity, four times GRPO's: RLOO traded syntax for style at 2 (on an "
        "AVX2 CPU) and at 4 (over 48 steps, on some seeds); at 8 it held the parse rate in every run measured "
        "(benchmarks/README.md, online RL and syntax).",
    )
    normalize_advantages: bool = Field(
        True,
        description="Standardise advantages over the batch. TRL's default is off; with reward-model logits of +-5 "
        "the gradients then hit the clip at every step.",
    )


POLICY_CONFIGS: dict[str, type[BaseRunConfig]] = {
    "dpo": DPORunConfig,
    "combined": CombinedRunConfig,
    "kto": KTORunConfig,
    "sft": SFTRunConfig,
    "grpo": GRPORunConfig,
    "rloo": RLOORunConfig,
}


class PipelineRunConfig(BaseModel):
    """The scheduled loop in one run: snapshot -> reward model -> policy -> evaluation -> version (-> promotion)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_kind: Literal["dpo", "combined", "kto", "sft", "grpo", "rloo"] = Field(
        "combined",
        description="Policy training method. grpo/rloo are scored by the reward model the pipeline trains first "
        "(or, with train_reward_model=false, the project's latest one).",
    )
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


class GateSettings(BaseModel):
    """The promotion gate's tolerances (trainers.gate): how much worse than the base or production a candidate may
    be, at the near end of the 95% interval of the paired difference, before it is refused. 0: not worse beyond
    noise; None: the measure is not gated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edit_distance: float | None = Field(
        0.0,
        ge=0,
        description="Edit replay distance to what users kept (0-1): over the regions users changed where an example"
        " is an edit of a model's code, over the whole text otherwise.",
    )
    parse_rate: float | None = Field(0.0, ge=0, description="Share of Python generations that parse.")
    empty: float | None = Field(0.0, ge=0, description="Share of empty (whitespace-only) generations.")
    degenerate: float | None = Field(
        0.0, ge=0, description="Share of generations that end in a repetition loop (one chunk repeated 3+ times)."
    )
    truncated: float | None = Field(0.0, ge=0, description="Share of generations cut off at the token limit.")
    length_shortfall: float | None = Field(
        0.05,
        ge=0,
        description="How much shorter than what the user kept (0 as long or longer, 1 empty), on average; a few"
        " percent is wording (camelCase is shorter than snake_case), the guard is for a policy that says much less.",
    )


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
    canary_alpha: float = Field(
        0.05,
        gt=0.0,
        lt=0.5,
        description="Chance of a false decision over the whole canary, however often the tick checks (its test is "
        "sequential).",
    )
    canary_effect_size: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Difference in acceptance rate the sequential test is tuned to decide fastest (its mixture's "
        "scale); any size is detected, this one soonest.",
    )
    canary_adaptive_share: bool = Field(
        False,
        description="Grow the canary's share from canary_share toward canary_share_max as evidence that it is better "
        "accrues; it falls back to canary_share when the evidence turns.",
    )
    canary_share_max: float = Field(0.5, ge=0.0, le=1.0, description="Ceiling of the adaptive canary share.")
    gate: GateSettings = Field(default_factory=GateSettings, description="The promotion gate's tolerances.")
    on_deleted_data: Literal["flag", "retrain"] = Field(
        "flag",
        description="When a deletion removes data a version learned from: flag the version, or also queue a pipeline"
        " run on the redacted snapshot (promoted through the gate as usual).",
    )
    price_per_mtok: float | None = Field(
        None, ge=0, description="Cost of serving your own model per million tokens (e.g. GPU cost / throughput)."
    )


class UpstreamSettings(BaseModel):
    """The rented model a project may put editloop in front of (project.settings["upstream"]): any OpenAI-compatible
    provider. The key is never stored: `api_key_env` names the serving process's environment variable holding it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, description="The provider's base URL, ending in /v1.")
    model: str | None = Field(None, description="The provider's model name.")
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable of the server holding the key."
    )
    price_input_per_mtok: float = Field(0.0, ge=0, description="Price per million prompt tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="Price per million completion tokens.")
    fallback: str | None = Field(
        None, description="What serves a request while the upstream is down: an alias, a version or `base`."
    )

    @property
    def configured(self) -> bool:
        return bool(self.url and self.model)


def upstream_settings(settings: dict[str, Any] | None) -> UpstreamSettings:
    try:
        return UpstreamSettings.model_validate((settings or {}).get("upstream", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"settings.upstream.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def model_settings(settings: dict[str, Any] | None) -> ModelSettings:
    try:
        return ModelSettings.model_validate((settings or {}).get("model", {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"settings.model.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
