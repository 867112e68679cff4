"""Wire types of training runs, adapter versions and alias moves."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="reward | dpo | combined | kto | sft | pipeline")
    snapshot_id: int | None = Field(None, description="Dataset snapshot to train on; default: a new one cut now.")
    config: dict[str, Any] = Field({}, description="Overrides of the kind's run config; unknown fields are refused.")


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    trigger: str
    snapshot_id: int | None
    config: dict[str, Any] = Field(description="The full run config, defaults filled in.")
    progress: dict[str, Any] = Field(description="stage, step, total, eta_s")
    metrics: dict[str, Any] = Field(description="live: the latest training logs; at the end, train and eval figures.")
    error: str | None
    attempts: int
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    version_ids: list[int]


class RunList(BaseModel):
    items: list[RunOut]


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str = Field(description="policy | reward")
    method: str
    run_id: int | None
    snapshot_id: int | None
    parent_id: int | None
    base_model: str
    manifest_sha256: str
    created_at: datetime
    aliases: list[str] = []
    deleted_data: list[dict[str, Any]] = Field(
        [], description="Deletion requests that removed data this version learned from: deletion_id, reason."
    )


class VersionDetail(VersionOut):
    manifest: dict[str, Any] = Field(description="Lineage, config, metrics and the sha256 of every file.")


class VersionList(BaseModel):
    items: list[VersionOut]
    aliases: dict[str, str] = Field(description="alias -> version name")


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: Literal["production", "canary"] = "production"
    reason: str | None = Field(None, max_length=2000)
    force: bool = Field(False, description="Promote even if the gate refuses; needs a reason, which is recorded.")


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)
    to: str | None = Field(None, description="Version to point at; default: the one the alias held before.")


class AliasEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    alias: str
    action: str
    version: str
    previous_version: str | None
    actor: str
    reason: str | None
    forced: bool
    gate: dict[str, Any] = Field(
        description="The promotion gate's verdict: passed, reasons, examples (snapshot, split, n) and, under "
        "`against`, the paired differences with their intervals against the base and production; `live`: the "
        "canary policy's sequential test"
    )
    summary: str = Field("", description="The verdict's paired differences, one line per comparison")
    created_at: datetime


class AliasEventList(BaseModel):
    items: list[AliasEventOut]


class RateOut(BaseModel):
    rate: float | None = Field(description="successes / n; None when n is 0")
    low: float | None = Field(description="Wilson score 95% interval")
    high: float | None
    successes: int
    n: int = Field(description="Generations with feedback (accepted, rejected or edited)")


class MeanOut(BaseModel):
    mean: float | None
    low: float | None = Field(description="95% interval of the mean")
    high: float | None
    n: int
    method: str = Field(description="How the interval was computed")


class LiveMetricsOut(BaseModel):
    ref: str = Field(description="As asked: a version name, an alias or `base`")
    model: str = Field(description="The version name (or `base`) that its generations carry")
    since: datetime | None = Field(description="Only generations shown at or after this time")
    served: int = Field(description="Generations it served")
    with_feedback: int = Field(description="Of those, accepted, rejected or edited: the denominator of the rates")
    accepted: int = Field(description="Accepted and never edited")
    edited: int = Field(description="Edited (whatever the decision)")
    rejected: int = Field(description="Rejected and never edited")
    acceptance_rate: RateOut
    edit_rate: RateOut
    edit_distance: MeanOut = Field(description="Normalized Levenshtein distance of edited generations to their edit")
    latency_ms: "LatencyOut"
    cost: "CostOut"


class LatencyOut(BaseModel):
    n: int = Field(description="Generations with a recorded latency")
    p50: float | None
    p95: float | None


class CostOut(BaseModel):
    priced: int = Field(description="Generations with a recorded cost (the target had a price when served)")
    total: float | None = Field(description="Their summed cost, in the currency of the project's prices")
    per_1k_generations: float | None
    per_accepted: float | None = Field(description="The target's spend over its accepted generations")


class LiveTestOut(BaseModel):
    metric: str
    a: float | None
    b: float | None
    difference: float | None = Field(description="a - b")
    higher_is_better: bool
    n: list[int] = Field(description="Observations per side")
    method: str = Field(description="The test used")
    statistic: float | None = Field(
        description="log of the mixture likelihood ratio (the rates' sequential test) or U of a (Mann-Whitney)"
    )
    p_value: float | None = Field(description="Always valid for the rates (sequential); fixed-horizon for distances")
    low: float | None = Field(None, description="Rates: the confidence sequence on a - b, valid at every look")
    high: float | None = Field(None, description="Rates: the confidence sequence on a - b, valid at every look")
    verdict: Literal["better", "worse", "no significant difference", "not enough data"] = Field(
        description="About a, at the comparison's alpha and min_samples"
    )


class LiveComparisonOut(BaseModel):
    a: LiveMetricsOut
    b: LiveMetricsOut
    since: datetime | None
    alpha: float
    min_samples: int = Field(description="Observations each side needs before a test decides")
    tests: dict[str, LiveTestOut] = Field(description="acceptance_rate, edit_rate, edit_distance")
    verdict: str = Field(description="The acceptance rate's verdict, the one the canary policy acts on")
