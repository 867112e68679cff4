"""The audit log: an append-only record of every admin action (who, when, what, from where). It holds key ids,
never keys, and names data by id, never by content: callers pass details without secrets or code."""

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, BigId, Json, UTCDateTime, utcnow


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_project_at", "project_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("projects.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))  # "key:12", or "cli:alice" for the command line
    address: Mapped[str] = mapped_column(String(64))  # the client's IP address, or "local"
    action: Mapped[str] = mapped_column(String(64))  # e.g. key.create, adapter.promote, deletion.create
    target: Mapped[str | None] = mapped_column(String(512))  # e.g. "key:14", "adapter:v3", "snapshot:2"
    details: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)


def record(
    session: Session,
    project_id: int | None,
    action: str,
    *,
    actor: str,
    address: str,
    target: str | None = None,
    **details: Any,
) -> AuditEntry:
    """Add an entry to the caller's transaction: it commits with the action, or not at all."""
    entry = AuditEntry(
        project_id=project_id, at=utcnow(), actor=actor, address=address, action=action, target=target, details=details
    )
    session.add(entry)
    return entry


def entries(
    session: Session,
    project_id: int,
    *,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Newest first. `action` matches a whole action or a prefix ending in a dot (`adapter.`)."""
    query = select(AuditEntry).where(AuditEntry.project_id == project_id)
    if action:
        prefix = action.endswith(".")
        query = query.where(
            AuditEntry.action.startswith(action, autoescape=True) if prefix else AuditEntry.action == action
        )
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if since:
        query = query.where(AuditEntry.at >= since)
    if until:
        query = query.where(AuditEntry.at < until)
    return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))
