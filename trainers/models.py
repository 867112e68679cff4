"""Training runs. The row is the state; a queue message only nudges a worker to look at it."""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, BigId, Json, UTCDateTime

ACTIVE = ("queued", "running")


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (
        # One active run per project, however many triggers fire at once.
        Index(
            "uq_training_runs_one_active",
            "project_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # pipeline | reward | dpo | ...
    status: Mapped[str] = mapped_column(String(16))  # queued | running | succeeded | failed | cancelled
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | rows | manual
    snapshot_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("dataset_snapshots.id", ondelete="SET NULL"), nullable=True
    )
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    progress: Mapped[dict[str, Any]] = mapped_column(Json)
    metrics: Mapped[dict[str, Any]] = mapped_column(Json)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
