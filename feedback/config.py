"""Per-project settings of the training-data build: the quality gates, the split, and the retraining trigger.
Stored as JSON on the project (`editloop projects set NAME key=value`); unset keys take these defaults."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_edit_distance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Edits below this normalized distance are also trivial (no edit pair). 0: trivial by meaning "
        "only (line-end spaces, blank lines), so a small consistent correction is kept as signal.",
    )
    max_edit_distance: float = Field(
        0.85, ge=0, le=1, description="Edits above this are total rewrites: no edit pair (the SFT row stays)."
    )
    min_chars: int = Field(1, ge=0, description="Shorter completions or final texts are dropped.")
    max_chars: int = Field(20_000, gt=0, description="Longer prompts, completions or final texts are dropped.")
    near_duplicate_similarity: float = Field(
        0.97, gt=0, le=1, description="A row this similar to a kept row of the same prompt is a near-duplicate."
    )
    check_python_syntax: bool = Field(
        True, description="Drop a Python edit that breaks syntax the model had right (flagged in the report)."
    )
    distill_upstream: bool = Field(
        True, description="Accepted generations of the upstream (the rented model) become SFT rows: distillation."
    )
    sft_accepted: bool = Field(
        False,
        description="Accepted generations of our own model also become SFT rows (what users kept as it was, beside "
        "what they edited it into). Off: they teach through KTO and choice pairs only.",
    )
    split_by: Literal["time", "user"] = Field("time", description="time: the newest prompts are eval; user: by user.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of prompt groups held out for evaluation.")
    retrain_min_new_rows: int = Field(
        200, ge=1, description="Start a retraining run when this many rows are new since the last snapshot."
    )
    retrain_every_hours: float | None = Field(
        None, gt=0, description="Also start one on this timetable (if any row is new). Unset: only by row count."
    )
    retrain_enabled: bool = Field(True, description="Let the schedule start retraining runs for this project.")
    retention_days: float | None = Field(
        None, gt=0, description="The schedule deletes generations older than this (unset: kept), as a deletion does."
    )
