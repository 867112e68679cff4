"""The raw event log and the per-generation join that the loop learns from."""

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, BigId, Json, UTCDateTime, utcnow


class FeedbackEvent(Base):
    """Append-only: what clients sent (scrubbed), once per (project, event_id)."""

    __tablename__ = "feedback_events"
    __table_args__ = (
        UniqueConstraint("project_id", "event_id"),
        Index("ix_feedback_events_project_generation", "project_id", "generation_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(16))
    generation_id: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Plain `json`, not `jsonb`: the log is written far more than it is queried, and jsonb parsing costs CPU.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What ingest did to the event, which the fold (feedback/fold.py) adds up per generation: the secrets it redacted
    # ({kind: count}, null when none), and whether this `generation` event's file path is excluded (its code dropped).
    secrets: Mapped[dict[str, int] | None] = mapped_column(JSON)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class FoldQueue(Base):
    """Generations whose events are stored but not yet folded into `generations`: one row per ingest transaction,
    deleted by the fold that takes it (feedback/fold.py)."""

    __tablename__ = "fold_queue"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    generation_ids: Mapped[list[str]] = mapped_column(Json)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Generation(Base):
    """One row per generation. Each group of fields is won by one event (the first `generation`, the latest
    decision, edit and rating by (occurred_at, event_id)), so the row converges whatever the arrival order.

    The code (prompt or messages, completion, prefix, suffix, accepted and final text) is not copied here: it stays
    in the payloads of the winning events, which `*_event_pk` name (`feedback_events.id`), and readers look them
    up (feedback/texts.py). A copy here would cost Postgres about as much again as storing the events."""

    __tablename__ = "generations"
    __table_args__ = (
        UniqueConstraint("project_id", "generation_id"),
        Index("ix_generations_project_outcome", "project_id", "outcome"),
        Index("ix_generations_project_updated", "project_id", "updated_at"),
        Index("ix_generations_project_prompt", "project_id", "prompt_hash"),
        # The console: generations per day (feedback/daily.py), and its list filtered by version or user, newest first.
        Index("ix_generations_project_shown", "project_id", "shown_at"),
        Index("ix_generations_project_model_id", "project_id", "model", "id"),
        Index("ix_generations_project_user_id", "project_id", "user", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"))
    generation_id: Mapped[str] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))

    # From the `generation` event (its prompt, messages, completion, prefix and suffix stay in its payload).
    # sha256 of the prompt (or the chat messages): generations of the same prompt share it.
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str | None] = mapped_column(String(64))
    file_path: Mapped[str | None] = mapped_column(String(1024))
    user: Mapped[str | None] = mapped_column(String(200))
    session: Mapped[str | None] = mapped_column(String(200))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    meta: Mapped[dict[str, Any] | None] = mapped_column(Json)
    shown_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    shown_event_id: Mapped[str | None] = mapped_column(String(200))
    shown_event_pk: Mapped[int | None] = mapped_column(BigInteger)

    # The latest of `accepted` / `rejected` (a partial accept's `accepted_text` stays in its payload).
    decision: Mapped[str | None] = mapped_column(String(16))
    reject_reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_event_id: Mapped[str | None] = mapped_column(String(200))
    decision_event_pk: Mapped[int | None] = mapped_column(BigInteger)

    # The latest `edited`: the final text is its payload's `final_text`.
    edited_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    edited_event_id: Mapped[str | None] = mapped_column(String(200))
    edited_event_pk: Mapped[int | None] = mapped_column(BigInteger)

    # The latest `rating`.
    rating_score: Mapped[float | None] = mapped_column(Float)
    rating_comment: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rating_event_id: Mapped[str | None] = mapped_column(String(200))

    # Derived from the above on every change.
    edit_distance: Mapped[float | None] = mapped_column(Float)
    excluded: Mapped[bool] = mapped_column(Boolean, default=False)
    secrets_redacted: Mapped[dict[str, int]] = mapped_column(Json)
    event_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TrainingRow(Base):
    """A row of training data in TRL's format, derived from one generation (or two, for a choice pair).
    Rebuilt when its source changes; `active` is false once its source no longer yields it (a later edit
    made it trivial, say). Snapshots copy rows, so rebuilding never changes a snapshot."""

    __tablename__ = "training_rows"
    __table_args__ = (
        UniqueConstraint("project_id", "kind", "source_key"),
        Index("ix_training_rows_project_built", "project_id", "built_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # edit_pair | choice_pair | kto | sft
    source_key: Mapped[str] = mapped_column(String(450))  # generation id(s) and role: stable across rebuilds
    prompt: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    chosen: Mapped[str | None] = mapped_column(Text)
    rejected: Mapped[str | None] = mapped_column(Text)
    completion: Mapped[str | None] = mapped_column(Text)
    label: Mapped[bool | None] = mapped_column(Boolean)
    user: Mapped[str | None] = mapped_column(String(200))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the latest event behind the row
    generation_ids: Mapped[list[str]] = mapped_column(Json)
    event_ids: Mapped[list[str]] = mapped_column(Json)
    content_hash: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean)
    built_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DatasetBuild(Base):
    """One incremental build: which generations it read (changed up to `watermark`) and what each gate did."""

    __tablename__ = "dataset_builds"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime)
    generations_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_added: Mapped[int] = mapped_column(Integer, default=0)
    rows_changed: Mapped[int] = mapped_column(Integer, default=0)
    rows_removed: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)


class DatasetSnapshot(Base):
    """An immutable, hashed copy of the active rows at a point in time, split into train and eval."""

    __tablename__ = "dataset_snapshots"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(Json)
    counts: Mapped[dict[str, Any]] = mapped_column(Json)  # {kind: {train: n, eval: n}}
    row_count: Mapped[int] = mapped_column(Integer)
    build_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("dataset_builds.id", ondelete="SET NULL"))
    # A deletion request may take rows out (the law wins over immutability): the hash the snapshot was cut with stays
    # here for lineage, `sha256` describes what remains, and `redactions` lists each request that took rows.
    original_sha256: Mapped[str | None] = mapped_column(String(64))
    redactions: Mapped[list[dict[str, Any]]] = mapped_column(Json, default=list, server_default=text("'[]'"))


class SnapshotRow(Base):
    __tablename__ = "snapshot_rows"
    __table_args__ = (Index("ix_snapshot_rows_snapshot_kind_split", "snapshot_id", "kind", "split"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(BigId, ForeignKey("dataset_snapshots.id", ondelete="CASCADE"))
    split: Mapped[str] = mapped_column(String(8))  # train | eval
    kind: Mapped[str] = mapped_column(String(16))
    source_key: Mapped[str] = mapped_column(String(450))
    prompt: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    chosen: Mapped[str | None] = mapped_column(Text)
    rejected: Mapped[str | None] = mapped_column(Text)
    completion: Mapped[str | None] = mapped_column(Text)
    label: Mapped[bool | None] = mapped_column(Boolean)
    user: Mapped[str | None] = mapped_column(String(200))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    generation_ids: Mapped[list[str]] = mapped_column(Json)
    event_ids: Mapped[list[str]] = mapped_column(Json)


class GenerationDay(Base):
    """Generations per (day shown, version, outcome), with the sums behind the mean edit distance and its interval:
    what the console charts, kept so that it never aggregates millions of rows per view (feedback/daily.py)."""

    __tablename__ = "generation_days"

    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)  # '' for generations without one
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    generations: Mapped[int] = mapped_column(Integer)
    distance_n: Mapped[int] = mapped_column(Integer)
    distance_sum: Mapped[float] = mapped_column(Float)
    distance_sumsq: Mapped[float] = mapped_column(Float)


class GenerationDayMark(Base):
    """Up to when each project's `generation_days` have been refreshed (a generation changed later is recounted)."""

    __tablename__ = "generation_day_marks"

    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    refreshed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DatasetBuildPartition(Base):
    """One partition of a partitioned build (feedback/partitions.py): the prompt groups whose hash falls in `part`
    of `parts`. The row is the state; a worker claims it with a conditional update, so messages are only nudges."""

    __tablename__ = "dataset_build_partitions"
    __table_args__ = (UniqueConstraint("plan", "part"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(BigId, ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    plan: Mapped[str] = mapped_column(String(32), index=True)
    part: Mapped[int] = mapped_column(Integer)
    parts: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | done
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the plan's: every partition's rows carry it
    since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    watermark: Mapped[datetime | None] = mapped_column(UTCDateTime)
    report: Mapped[dict[str, Any] | None] = mapped_column(Json)
    build_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("dataset_builds.id", ondelete="SET NULL"))
