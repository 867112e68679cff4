"""Wire types of dataset snapshots and the builds they were cut after."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BuildOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    started_at: datetime
    finished_at: datetime | None
    watermark: datetime | None = Field(description="Generations changed up to this time were read.")
    generations_read: int
    rows_added: int
    rows_changed: int
    rows_removed: int
    report: dict[str, Any] = Field(description="What each quality gate kept and dropped.")


class SnapshotOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    sha256: str = Field(description="Over a canonical serialization of every row and its split.")
    counts: dict[str, dict[str, int]] = Field(description="Rows per kind and split: {kind: {train: n, eval: n}}.")
    row_count: int
    build_id: int | None
    original_sha256: str | None = Field(
        None, description="The hash it was cut with, if a deletion request has since taken rows out of it."
    )
    redactions: list[dict[str, Any]] = Field(
        [], description="Each deletion request that took rows out: its id, rows removed, hashes before and after."
    )


class SnapshotDetail(SnapshotOut):
    config: dict[str, Any] = Field(description="The dataset config the snapshot was cut with.")
    build: BuildOut | None = Field(description="The build the snapshot was cut after, if any.")


class SnapshotList(BaseModel):
    items: list[SnapshotOut] = Field(description="Newest first.")
