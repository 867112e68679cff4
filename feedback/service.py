"""Ingest and read feedback. Functions take the session first and never commit: the caller owns the transaction."""

import base64
import fnmatch
from collections import Counter
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Table, bindparam, text
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import InvalidInput, NotFound
from core.projects import Project
from core.settings import Settings
from feedback import consent, fold, texts
from feedback.bulk import BulkWriter, dbapi_sql, pg_fetch
from feedback.join import FEEDBACK_CODE, GENERATION_CODE
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
from feedback.scrub import may_hold_secrets, scrub_text

_COMMON = {"event_id", "type", "generation_id", "occurred_at"}
_GEN = cast(Table, Generation.__table__)
_EVENTS = cast(Table, FeedbackEvent.__table__)
_WRITE_EVENTS = BulkWriter(
    _EVENTS,
    ["project_id", "event_id", "type", "generation_id", "occurred_at", "received_at", "payload", "secrets", "excluded"],
    conflict=["project_id", "event_id"],
    returning="event_id",
)
# The shortest text in which scrub_text finds a secret has 7 characters (`://:pw@`, a password in a URL); the many
# short strings of an event (language, user, version...) skip the scan.
MIN_SECRET_CHARS = 7


def _texts(value: dict[str, Any] | list[Any], out: list[str]) -> list[str]:
    """The strings in a payload that could hold a secret."""
    for item in value.values() if isinstance(value, dict) else value:
        if isinstance(item, str):
            if len(item) >= MIN_SECRET_CHARS:
                out.append(item)
        elif isinstance(item, dict | list):
            _texts(item, out)
    return out


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


# Deferred folding on Postgres: the events and their fold_queue row in one statement (one round trip).
_PG_STORE_AND_QUEUE = text(
    f"WITH ins AS ({_WRITE_EVENTS.insert_sql} RETURNING event_id, generation_id), q AS (INSERT INTO fold_queue"
    " (project_id, generation_ids, queued_at) SELECT :p, jsonb_agg(DISTINCT ins.generation_id), :t FROM ins"
    " HAVING count(*) > 0) SELECT event_id FROM ins"
)
# The same in psycopg's own parameter style: ingest runs it on the session's DBAPI connection, past SQLAlchemy's
# execution layers (a tenth of a single-event request's CPU went to them).
_PG_STORE_AND_QUEUE_DBAPI = dbapi_sql(_PG_STORE_AND_QUEUE)
# The same, unless a user or repository the events name has opted out: then it stores nothing and answers one NULL,
# and `store` withholds their code and stores again. The opt-out check rides in the insert's own round trip (as a query
# of its own it cost ingest a quarter of its single-event rate: benchmarks/README.md, ingest) and reads the same
# snapshot as the insert, so an opt-out that has committed is always seen.
_PG_GUARDED_STORE_AND_QUEUE_DBAPI = dbapi_sql(
    text(
        "WITH blocked AS (SELECT 1 FROM consents c JOIN unnest(CAST(:kinds AS text[]), CAST(:subjects AS text[]))"
        " AS s(kind, subject) ON c.kind = s.kind AND c.subject = s.subject WHERE c.project_id = :p AND c.opted_out"
        f" LIMIT 1), ins AS ({_WRITE_EVENTS.insert_sql_where('NOT EXISTS (SELECT FROM blocked)')}"
        " RETURNING event_id, generation_id), q AS (INSERT INTO fold_queue (project_id, generation_ids, queued_at)"
        " SELECT :p, jsonb_agg(DISTINCT ins.generation_id), :t FROM ins HAVING count(*) > 0)"
        " SELECT event_id FROM ins UNION ALL SELECT NULL FROM blocked"
    )
)

# Code-bearing events of generations whose `generation` event (stored earlier, perhaps not folded yet) has an
# excluded path: their code is dropped before it is stored.
_PG_EXCLUDED = text(
    "SELECT DISTINCT e.generation_id FROM feedback_events e JOIN unnest(CAST(:gids AS text[])) AS ids(gid)"
    " ON e.generation_id = ids.gid WHERE e.project_id = :p AND e.excluded"
)
_SQLITE_EXCLUDED = text(
    "SELECT DISTINCT generation_id FROM feedback_events WHERE project_id = :p AND excluded AND generation_id IN :gids"
).bindparams(bindparam("gids", expanding=True))


def _excluded_before(session: Session, project_id: int, generation_ids: list[str]) -> set[str]:
    query = _PG_EXCLUDED if session.get_bind().dialect.name == "postgresql" else _SQLITE_EXCLUDED
    return set(session.scalars(query, {"p": project_id, "gids": generation_ids}))


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
    """Validate, scrub and store a batch; fold the new events into their generations (now or by the folder, as
    `settings.ingest_fold` says). Invalid events are
    reported by index and stored nowhere; events already stored are counted as duplicates and change nothing."""
    batch = validate(raw_events, settings)
    if not batch.events:
        return tally(batch, set(), {})
    if excluded_paths is None:  # callers that authenticated already know them
        project = session.get(Project, project_id)
        if project is None:
            raise NotFound(f"project {project_id} does not exist")
        excluded_paths = project.excluded_paths or []
    written = store(session, project_id, batch.events, excluded_paths, fold.inline(session, settings))
    return tally(batch, written.stored, written.secrets)


def store(
    session: Session,
    project_id: int,
    events: Sequence[Event],
    excluded_paths: Sequence[str],
    fold_inline: bool = True,
) -> Written:
    """Scrub and store valid events with distinct event_ids (of one request or of many). The generations that
    gained events are folded now (`fold_inline`) or queued for the folder (feedback/fold.py)."""
    by_id = {e.event_id: e for e in events}
    if not by_id:
        return Written(set(), {})
    now = utcnow()
    subjects = consent.subjects(events)
    if not fold_inline and session.get_bind().dialect.name == "postgresql":
        # Built as if no one had opted out: the guarded statement refuses the rows if someone has.
        rows = _rows(session, project_id, events, excluded_paths, set(), now)
        guard = (_PG_GUARDED_STORE_AND_QUEUE_DBAPI, _subject_arrays(subjects)) if subjects else None
        written = _pg_store(session, project_id, rows, now, guard)
        if written is None:
            withheld = consent.withheld(session, project_id, subjects)
            written = _pg_store(
                session, project_id, _rows(session, project_id, events, excluded_paths, withheld, now), now
            )
        assert written is not None
        return written
    # SQLite has no fold queue: it always folds here.
    withheld = consent.withheld(session, project_id, subjects)
    rows = _rows(session, project_id, events, excluded_paths, withheld, now)
    stored = set(_WRITE_EVENTS.write(session, [row for row, _ in rows]))
    fold.fold(session, {project_id: {by_id[event_id].generation_id for event_id in stored}})
    return Written(stored, _secrets_of(rows, stored))


def _subject_arrays(subjects: Sequence[tuple[str, str | None, str | None]]) -> dict[str, list[str]]:
    """The users and repositories that events name, as two arrays (`kinds`, `subjects`) for `unnest`."""
    wanted = sorted(
        {(kind, value) for _, user, repo in subjects for kind, value in (("user", user), ("repository", repo)) if value}
    )
    return {"kinds": [kind for kind, _ in wanted], "subjects": [value for _, value in wanted]}


def _pg_store(
    session: Session,
    project_id: int,
    rows: list[tuple[dict[str, Any], Counter[str] | None]],
    now: datetime,
    guard: tuple[str, dict[str, list[str]]] | None = None,
) -> Written | None:
    """Store the rows and queue their fold in one statement; None when the guarded statement refused them."""
    sql, extra = guard or (_PG_STORE_AND_QUEUE_DBAPI, {})
    # The rows hold exactly the writer's columns: serialized as they are, without `document`'s copies.
    params = {"rows": orjson.dumps([row for row, _ in rows]).decode(), "p": project_id, "t": now, **extra}
    stored = {event_id for (event_id,) in pg_fetch(session, sql, params)}
    if None in stored:
        return None
    return Written(stored, _secrets_of(rows, stored))


def _secrets_of(rows: list[tuple[dict[str, Any], Counter[str] | None]], stored: Set[str]) -> dict[str, Counter[str]]:
    return {row["event_id"]: found for row, found in rows if found and row["event_id"] in stored}


def _rows(
    session: Session,
    project_id: int,
    events: Sequence[Event],
    excluded_paths: Sequence[str],
    withheld: set[str],
    now: datetime,
) -> list[tuple[dict[str, Any], Counter[str] | None]]:
    """The events' rows, scrubbed, in event_id order, each with the secrets found in it. Code is left out of
    generations under an excluded path or of an opted-out subject (`withheld`), and out of their feedback events."""
    by_id = {e.event_id: e for e in events}
    globs = list(excluded_paths)
    # With no globs now, no generation can be excluded now. (One excluded under globs since removed keeps its code out
    # all the same: the fold redacts feedback code of excluded generations.)
    newly_excluded: set[str] = set()
    excluded: set[str] = set()
    # Opted-out users and repositories are stored as an excluded path is: outcome, no code (feedback/consent.py).
    if globs or withheld:
        newly_excluded = withheld | {
            e.generation_id for e in events if isinstance(e, GenerationEvent) and is_excluded(e.file_path, globs)
        }
        with_code = {
            e.generation_id
            for e in events
            if not isinstance(e, GenerationEvent) and any(getattr(e, f, None) is not None for f in FEEDBACK_CODE)
        }
        earlier = sorted(with_code - newly_excluded)
        excluded = newly_excluded | (_excluded_before(session, project_id, earlier) if earlier else set())

    rows = []
    for event_id in sorted(by_id):  # one insert order everywhere, so concurrent batches cannot deadlock
        event = by_id[event_id]
        payload = event.model_dump(mode="json", exclude=_COMMON, exclude_none=True)
        if event.generation_id in excluded:
            for field in (*GENERATION_CODE, *FEEDBACK_CODE):
                payload.pop(field, None)
        found: Counter[str] | None = None
        texts = _texts(payload, [])
        if texts and may_hold_secrets(texts):  # most events: one prefilter pass over all their texts, and clean
            found = Counter()
            payload = _scrub(payload, found)
            if not found:
                found = None
        rows.append(
            (
                {
                    "project_id": project_id,
                    "event_id": event_id,
                    "type": event.type,
                    "generation_id": event.generation_id,
                    "occurred_at": event.occurred_at,
                    "received_at": now,
                    "payload": payload,
                    "secrets": dict(found) if found else None,
                    "excluded": isinstance(event, GenerationEvent) and event.generation_id in newly_excluded,
                },
                found,
            )
        )
    return rows


def _out(row: Any) -> GenerationOut:
    data = dict(row)
    data.update(texts.code_of_mapping(data))
    data["id"] = data.pop("generation_id")
    data["metadata"] = data.pop("meta")
    data["secrets_redacted"] = data["secrets_redacted"] or {}
    return GenerationOut.model_validate(data)


def get_generation(session: Session, project_id: int, generation_id: str) -> GenerationOut:
    """The joined record, with every event stored so far folded in (the caller commits what that folded)."""
    fold.settle(session, project_id, [generation_id])
    row = (
        session.execute(
            texts.select_with_code(_GEN).where(_GEN.c.project_id == project_id, _GEN.c.generation_id == generation_id)
        )
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
    user: str | None = None,
    before: datetime | None = None,
    newest_first: bool = False,
) -> GenerationPage:
    """Generations in the order they were first seen (or the reverse), filtered; `since` and `before` keep those
    changed at or after, and before, a time. What is still queued for the project is folded first (the caller
    commits it)."""
    fold.settle(session, project_id)
    query = texts.select_with_code(_GEN).where(_GEN.c.project_id == project_id)
    if outcome is not None:
        query = query.where(_GEN.c.outcome == outcome)
    if model is not None:
        query = query.where(_GEN.c.model == model)
    if user is not None:
        query = query.where(_GEN.c.user == user)
    if since is not None:
        query = query.where(_GEN.c.updated_at >= since)
    if before is not None:
        query = query.where(_GEN.c.updated_at < before)
    if cursor is not None:
        pk = _decode_cursor(cursor)
        query = query.where(_GEN.c.id < pk if newest_first else _GEN.c.id > pk)
    order = _GEN.c.id.desc() if newest_first else _GEN.c.id
    rows = session.execute(query.order_by(order).limit(limit + 1)).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return GenerationPage(items=[_out(r) for r in rows], next_cursor=_encode_cursor(rows[-1]["id"]) if more else None)
