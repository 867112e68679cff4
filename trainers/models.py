"""Training runs. The row is the state; a queue message only nudges a worker to look at it."""

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

import feedback.rights_models  # noqa: F401  (adapter_version_flags refers to deletion_requests)
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
    # Liveness: a running run whose heartbeat stops was killed with its worker (see trainers.runs.reap).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_by: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    version_ids: Mapped[list[int]] = mapped_column(
        Json, default=list, server_default=text("'[]'")
    )  # versions this run registered


class AdapterVersion(Base):
    """An immutable trained adapter: a PEFT directory in artifact storage plus its manifest (lineage, metrics,
    checksums). Rows are only inserted after the directory is published, and never updated."""

    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("project_id", "number"), UniqueConstraint("project_id", "name"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))  # v{number}
    kind: Mapped[str] = mapped_column(String(16))  # policy | reward
    method: Mapped[str] = mapped_column(String(32))  # dpo | kto | sft | combined | reward | grpo | rloo
    run_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("training_runs.id", ondelete="SET NULL"))
    snapshot_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("dataset_snapshots.id", ondelete="SET NULL"), nullable=True
    )
    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("adapter_versions.id"), nullable=True)
    base_model: Mapped[str] = mapped_column(String(1024))
    uri: Mapped[str] = mapped_column(String(2048))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(Json)
    metrics: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AdapterAlias(Base):
    """`production` / `canary` pointing at a version. Promotion moves an alias; it never edits a version."""

    __tablename__ = "adapter_aliases"

    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(32), primary_key=True)
    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("adapter_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AliasEvent(Base):
    """Every promotion and rollback: who, when, why, what the gate said."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    alias: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))  # promote | rollback | clear
    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("adapter_versions.id"))
    previous_version_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("adapter_versions.id"))
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    gate: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VersionFlag(Base):
    """A version that learned from data a deletion request removed: trained on a snapshot that held it, or continued
    from a version that did. The version itself never changes; the flag says why, and which request."""

    __tablename__ = "adapter_version_flags"
    __table_args__ = (UniqueConstraint("version_id", "deletion_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("adapter_versions.id", ondelete="CASCADE"))
    deletion_id: Mapped[int] = mapped_column(BigId, ForeignKey("deletion_requests.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(Text)
    # The manifest's hash before the deletion took the example texts out of it (None: nothing to take).
    manifest_sha256_before: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AdapterEvaluation(Base):
    """A later evaluation of a version on its own snapshot's eval examples, against the production version of that
    time (and the base). Versions never change, so what the promotion gate needs when production has moved since a
    version was trained is stored beside it (trainers.reevaluate)."""

    __tablename__ = "adapter_evaluations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int] = mapped_column(BigId, ForeignKey("adapter_versions.id"), index=True)
    production_version_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("adapter_versions.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(Json)  # {"eval": ...} as a version's own
    created_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
