"""Opt-outs of users and repositories. From the moment an opt-out commits, ingest stores the generations of that
user (or of that repository: a generation event's `metadata.repository`) as it stores an excluded path's: the outcome
for the live metrics, no code; and the row build never turns them into training rows. Opting out deletes nothing
that came before: a deletion request does that."""

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from core.db import dialect_insert, utcnow
from core.errors import InvalidInput
from feedback.rights_models import Consent
from feedback.schemas import GenerationEvent

Kind = Literal["user", "repository"]
KINDS = ("user", "repository")


def subject_digest(kind: str, subject: str) -> str:
    """How the audit log names a subject: by digest, so that it names no one once their data is deleted."""
    return f"{kind}:sha256:{hashlib.sha256(subject.encode()).hexdigest()[:16]}"


def repository_of(metadata: dict[str, Any] | None) -> str | None:
    value = (metadata or {}).get("repository")
    return value if isinstance(value, str) and value else None


def set_consent(session: Session, project_id: int, kind: str, subject: str, opted_out: bool, actor: str) -> Consent:
    if kind not in KINDS:
        raise InvalidInput(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not subject or len(subject) > 1024:
        raise InvalidInput("subject: 1-1024 characters")
    now = utcnow()
    values = {"opted_out": opted_out, "changed_at": now, "changed_by": actor}
    insert = dialect_insert(session, Consent.__table__).values(
        project_id=project_id, kind=kind, subject=subject, **values
    )
    session.execute(insert.on_conflict_do_update(index_elements=["project_id", "kind", "subject"], set_=values))
    found = session.scalar(
        select(Consent).where(Consent.project_id == project_id, Consent.kind == kind, Consent.subject == subject)
    )
    assert found is not None
    session.refresh(found)
    return found


def list_consents(session: Session, project_id: int, opted_out_only: bool = False) -> list[Consent]:
    query = select(Consent).where(Consent.project_id == project_id)
    if opted_out_only:
        query = query.where(Consent.opted_out.is_(True))
    return list(session.scalars(query.order_by(Consent.kind, Consent.subject)))


def subjects(events: Sequence[Any]) -> list[tuple[str, str | None, str | None]]:
    """(generation id, user, repository) of the generation events that name a user or a repository."""
    out = []
    for event in events:
        if isinstance(event, GenerationEvent):
            repo = repository_of(event.metadata)
            if event.user is not None or repo is not None:
                out.append((event.generation_id, event.user, repo))
    return out


def withheld(session: Session, project_id: int, subjects: Sequence[tuple[str, str | None, str | None]]) -> set[str]:
    """Of (generation id, user, repository) of a batch's generation events, the generation ids whose user or
    repository is opted out now. One indexed query, in the ingest transaction, when any event names either."""
    wanted = {(kind, value) for _, user, repo in subjects for kind, value in (("user", user), ("repository", repo))}
    wanted.discard(("user", None))
    wanted.discard(("repository", None))
    if not wanted:
        return set()
    query = select(Consent.kind, Consent.subject).where(
        Consent.project_id == project_id,
        Consent.opted_out.is_(True),
        tuple_(Consent.kind, Consent.subject).in_(sorted(wanted)),  # type: ignore[arg-type]
    )
    out = {(kind, subject) for kind, subject in session.execute(query)}
    if not out:
        return set()
    return {gid for gid, user, repo in subjects if ("user", user) in out or ("repository", repo) in out}


def opted_out_users(session: Session, project_id: int) -> dict[str, datetime]:
    """User -> when they opted out, for the row build: what they generated since never becomes a row."""
    query = select(Consent.subject, Consent.changed_at).where(
        Consent.project_id == project_id, Consent.kind == "user", Consent.opted_out.is_(True)
    )
    return {subject: at for subject, at in session.execute(query)}


def withholds(opted_out: dict[str, datetime], user: str | None, shown_at: datetime | None) -> bool:
    if not opted_out or user is None or user not in opted_out:
        return False
    return shown_at is None or shown_at >= opted_out[user]
