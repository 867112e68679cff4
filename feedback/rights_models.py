"""Tables of data rights: deletion requests and their progress, opt-outs, and the exports a deletion must follow."""

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, BigId, Json, UTCDateTime


class DeletionRequest(Base):
    """One deletion, walked in short batches (feedback/deletion.py). The row is the state: its phase and cursor say
    where the walk is, so a worker killed half way leaves the next one to resume where it stopped."""

    __tablename__ = "deletion_requests"
    __table_args__ = (Index("ix_deletion_requests_project_state", "project_id", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"))
    # {"user": ...} | {"session": ...} | {"generation_ids": [...]} | {"file_path": GLOB} | {"before": ISO time};
    # once done, the values are replaced by their sha256: the record outlives the data without naming it.
    selector: Mapped[dict[str, Any]] = mapped_column(Json)
    trigger: Mapped[str] = mapped_column(String(16))  # api | cli | retention
    state: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed
    phase: Mapped[str] = mapped_column(String(16))  # generations | rows | snapshots | exports | versions | done
    cursor: Mapped[int] = mapped_column(BigId, default=0)  # last id handled in the phase
    counts: Mapped[dict[str, int]] = mapped_column(Json, default=dict)
    # {snapshot id (str): rows removed}; the adapter versions flagged are in adapter_version_flags.
    snapshots: Mapped[dict[str, int]] = mapped_column(Json, default=dict)
    retrain_run_id: Mapped[int | None] = mapped_column(BigId)
    requested_by: Mapped[str] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DeletionItem(Base):
    """The generation ids a request removed, kept while it runs: the later phases find the training and snapshot rows
    derived from them after their events are gone. Deleted when the request is done."""

    __tablename__ = "deletion_items"

    request_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("deletion_requests.id", ondelete="CASCADE"), primary_key=True
    )
    generation_id: Mapped[str] = mapped_column(String(200), primary_key=True)


class Consent(Base):
    """An opt-out of a user or a repository (`metadata.repository` of a generation event). While opted out, their
    events keep their outcome but no code, and never become training rows."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("project_id", "kind", "subject"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # user | repository
    subject: Mapped[str] = mapped_column(String(1024))
    opted_out: Mapped[bool] = mapped_column(Boolean)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_by: Mapped[str] = mapped_column(String(200))


class SnapshotExport(Base):
    """Where a snapshot was exported, so that a deletion can rewrite the files it wrote there."""

    __tablename__ = "snapshot_exports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    snapshot_id: Mapped[int] = mapped_column(BigId, ForeignKey("dataset_snapshots.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(4096))
    format: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
