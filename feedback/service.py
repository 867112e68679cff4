"""Ingest and read feedback. Functions take the session first and never commit: the caller owns the transaction."""

import base64
import fnmatch
from collections import Counter
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ARRAY, String, Table, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import InvalidInput, NotFound
from core.projects import Project
from core.settings import Settings
from feedback.bulk import BulkWriter
from feedback.join import FEEDBACK_CODE, GENERATION_CODE, derive, empty_row, merge
from feedback.models import FeedbackEvent, Generation
from feedback.schemas import (
    Event,
    EventError,
    GenerationEvent,
    GenerationOut,
    GenerationPage,
    IngestResult,
    parse_event,
)
from feedback.scrub import scrub_text

_COMMON = {"event_id", "type", "generation_id", "occurred_at"}
_GEN = cast(Table, Generation.__table__)
_EVENTS = cast(Table, FeedbackEvent.__table__)
_WRITE_EVENTS = BulkWriter(
    _EVENTS,
    ["project_id", "event_id", "type", "generation_id", "occurred_at", "received_at", "payload"],
    conflict=["project_id", "event_id"],
    returning="event_id",
)
_WRITE_GENERATIONS = BulkWriter(
    _GEN,
    [c.name for c in _GEN.columns if c.name != "id"],
    conflict=["project_id", "generation_id"],
    update=[c.name for c in _GEN.columns if c.name not in ("id", "project_id", "generation_id", "created_at")],
)


# The shortest text in which scrub_text finds a secret has 7 characters (`://:pw@`, a password in a URL); the many
# short strings of an event (language, user, version...) skip the scan.
MIN_SECRET_CHARS = 7


def _scrub(value: Any, counts: Counter[str]) -> Any:
    if isinstance(value, str):
        if len(value) < MIN_SECRET_CHARS:
            return value
        clean, found = scrub_text(value)
        if found:
            counts.update(found)
        return clean
    if isinstance(value, list):
        return [_scrub(v, counts) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, counts) for k, v in value.items()}
    return value


def is_excluded(file_path: str | None, globs: list[str]) -> bool:
    if not file_path or not globs:
        return False
    name = file_path.replace("\\", "/").rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(file_path, g) or fnmatch.fnmatchcase(name, g) for g in globs)


def _lock_generations(session: Session, project_id: int, generation_ids: list[str]) -> None:
    """Serialize concurrent batches that touch the same generation. Locks are taken in one global order, so two
    batches never deadlock on each other. SQLite needs none: its transactions start with the write lock."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended(CAST(:p AS text) || ':' || g, 0) AS k"
            " FROM unnest(CAST(:gids AS text[])) AS g ORDER BY k) AS s"
        ),
        {"p": project_id, "gids": generation_ids},
    )


# A join on the ids leaves the unique (project_id, generation_id) index as the only one that fits: with stale
# statistics (a new database, a new project) an IN list let the planner pick the updated_at index and filter every
# row of the project. Both statements are built once: building one per call cost more than running it.
_IDS = func.unnest(bindparam("gids", type_=ARRAY(String))).table_valued("gid").render_derived(name="ids")
_PG_CURRENT = select(_GEN).join(_IDS, _GEN.c.generation_id == _IDS.c.gid).where(_GEN.c.project_id == bindparam("pid"))
_SQLITE_CURRENT = select(_GEN).where(
    _GEN.c.project_id == bindparam("pid"), _GEN.c.generation_id.in_(bindparam("gids", expanding=True))
)


def _current_rows(session: Session, project_id: int, generation_ids: list[str]) -> Any:
    query = _PG_CURRENT if session.get_bind().dialect.name == "postgresql" else _SQLITE_CURRENT
    return session.execute(query, {"pid": project_id, "gids": generation_ids}).mappings()


@dataclass(frozen=True, slots=True)
class Batch:
    """A request's events after validation: the valid ones (the first of each event_id, in order) and the rest."""

    received: int
    events: list[Event]
    errors: list[EventError]
    repeated: int  # events whose event_id came earlier in the same request


@dataclass(frozen=True, slots=True)
class Written:
    """What `store` did: the event_ids it stored, and the secrets it redacted in each of them."""

    stored: set[str]
    secrets: dict[str, Counter[str]]


def validate(raw_events: list[Any], settings: Settings) -> Batch:
    """Validate a request's events one by one; invalid events are reported by index."""
    errors: list[EventError] = []
    events: dict[str, Event] = {}
    repeated = 0
    now = utcnow()
    for index, raw in enumerate(raw_events):
        parsed = parse_event(index, raw, settings, now)
        if isinstance(parsed, EventError):
            errors.append(parsed)
        elif parsed.event_id in events:
            repeated += 1
        else:
            events[parsed.event_id] = parsed
    return Batch(received=len(raw_events), events=list(events.values()), errors=errors, repeated=repeated)


def tally(batch: Batch, stored: Set[str], secrets: Mapping[str, Counter[str]]) -> IngestResult:
    """The answer to a request: `stored` holds the event_ids stored on its behalf, the rest were duplicates."""
    counts: Counter[str] = Counter()
    mine = 0
    for event in batch.events:
        if event.event_id in stored:
            mine += 1
            counts.update(secrets.get(event.event_id, ()))
    return IngestResult(
        received=batch.received,
        stored=mine,
        duplicates=batch.repeated + len(batch.events) - mine,
        errors=batch.errors,
        secrets_redacted=dict(counts),
    )


def ingest(
    session: Session,
    project_id: int,
    raw_events: list[Any],
    settings: Settings,
    excluded_paths: Sequence[str] | None = None,
) -> IngestResult:
    """Validate, scrub and store a batch; fold the new events into their generations. Invalid events are
    reported by index and stored nowhere; events already stored are counted as duplicates and change nothing."""
    batch = validate(raw_events, settings)
    if not batch.events:
        return tally(batch, set(), {})
    if excluded_paths is None:  # callers that authenticated already know them
        project = session.get(Project, project_id)
        if project is None:
            raise NotFound(f"project {project_id} does not exist")
        excluded_paths = project.excluded_paths or []
    written = store(session, project_id, batch.events, excluded_paths)
    return tally(batch, written.stored, written.secrets)


def store(session: Session, project_id: int, events: Sequence[Event], excluded_paths: Sequence[str]) -> Written:
    """Scrub and store valid events with distinct event_ids (of one request or of many), and fold those not
    stored before into their generations."""
    by_id = {e.event_id: e for e in events}
    if not by_id:
        return Written(set(), {})
    globs = list(excluded_paths)
    now = utcnow()

    generation_ids = sorted({e.generation_id for e in events})
    _lock_generations(session, project_id, generation_ids)
    rows = {r["generation_id"]: dict(r) for r in _current_rows(session, project_id, generation_ids)}
    excluded = {g for g, r in rows.items() if r["excluded"]}
    newly_excluded = {
        e.generation_id
        for e in events
        if isinstance(e, GenerationEvent) and e.generation_id not in excluded and is_excluded(e.file_path, globs)
    }
    excluded |= newly_excluded

    order = sorted(by_id)  # one insert order everywhere, so concurrent batches cannot deadlock
    per_event: dict[str, tuple[dict[str, Any], Counter[str]]] = {}
    for event_id in order:
        event = by_id[event_id]
        payload = event.model_dump(mode="json", exclude=_COMMON, exclude_none=True)
        if event.generation_id in excluded:
            for field in (*GENERATION_CODE, *FEEDBACK_CODE):
                payload.pop(field, None)
        found: Counter[str] = Counter()
        per_event[event_id] = (_scrub(payload, found), found)

    stored = set(
        _WRITE_EVENTS.write(
            session,
            [
                {
                    "project_id": project_id,
                    "event_id": event_id,
                    "type": by_id[event_id].type,
                    "generation_id": by_id[event_id].generation_id,
                    "occurred_at": by_id[event_id].occurred_at,
                    "received_at": now,
                    "payload": per_event[event_id][0],
                }
                for event_id in order
            ],
        )
    )

    changed: dict[str, dict[str, Any]] = {}
    for event_id in sorted(stored):
        event = by_id[event_id]
        row = changed.get(event.generation_id)
        if row is None:
            row = rows.get(event.generation_id) or empty_row(project_id, event.generation_id, now)
            row["secrets_redacted"] = dict(row["secrets_redacted"] or {})
            changed[event.generation_id] = row
        payload, found = per_event[event_id]
        merge(row, event, payload)
        for kind, n in found.items():
            row["secrets_redacted"][kind] = row["secrets_redacted"].get(kind, 0) + n
    for generation_id in newly_excluded:
        row = changed.get(generation_id) or rows[generation_id]
        row["excluded"] = True
        changed[generation_id] = row
    for row in changed.values():
        derive(row)
        row["updated_at"] = now
        row.pop("id", None)

    _WRITE_GENERATIONS.write(session, [changed[g] for g in sorted(changed)])
    if newly_excluded:
        _redact_stored_code(session, project_id, newly_excluded)
    return Written(stored, {event_id: per_event[event_id][1] for event_id in stored if per_event[event_id][1]})


def _redact_stored_code(session: Session, project_id: int, generation_ids: set[str]) -> None:
    """Feedback that arrived before its `generation` revealed an excluded path still holds code: remove it."""
    stored = session.execute(
        select(_EVENTS.c.id, _EVENTS.c.payload).where(
            _EVENTS.c.project_id == project_id,
            _EVENTS.c.generation_id.in_(sorted(generation_ids)),
            _EVENTS.c.type.in_(["accepted", "edited"]),
        )
    ).all()
    for event_pk, payload in stored:
        if any(f in payload for f in FEEDBACK_CODE):
            kept = {k: v for k, v in payload.items() if k not in FEEDBACK_CODE}
            session.execute(update(FeedbackEvent).where(FeedbackEvent.id == event_pk).values(payload=kept))


def _out(row: Any) -> GenerationOut:
    data = dict(row)
    data["id"] = data.pop("generation_id")
    data["metadata"] = data.pop("meta")
    data["secrets_redacted"] = data["secrets_redacted"] or {}
    return GenerationOut.model_validate(data)


def get_generation(session: Session, project_id: int, generation_id: str) -> GenerationOut:
    row = (
        session.execute(select(_GEN).where(_GEN.c.project_id == project_id, _GEN.c.generation_id == generation_id))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"generation {generation_id!r} does not exist")
    return _out(row)


def _encode_cursor(pk: int) -> str:
    return base64.urlsafe_b64encode(f"g:{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, pk = raw.split(":", 1)
        if kind != "g":
            raise ValueError
        return int(pk)
    except ValueError:
        raise InvalidInput("cursor: not a cursor returned by this endpoint") from None


def list_generations(
    session: Session,
    project_id: int,
    *,
    outcome: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> GenerationPage:
    """Generations in the order they were first seen, filtered; `since` keeps those changed at or after it."""
    query = select(_GEN).where(_GEN.c.project_id == project_id)
    if outcome is not None:
        query = query.where(_GEN.c.outcome == outcome)
    if model is not None:
        query = query.where(_GEN.c.model == model)
    if since is not None:
        query = query.where(_GEN.c.updated_at >= since)
    if cursor is not None:
        query = query.where(_GEN.c.id > _decode_cursor(cursor))
    rows = session.execute(query.order_by(_GEN.c.id).limit(limit + 1)).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return GenerationPage(items=[_out(r) for r in rows], next_cursor=_encode_cursor(rows[-1]["id"]) if more else None)
