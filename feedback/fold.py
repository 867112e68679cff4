"""The fold: the per-generation join (`generations`) computed from the event log (`feedback_events`).

A fold recomputes each generation it is given from all of that generation's stored events, with `join.merge` (one
winning event per field group, by a total order), so folding is idempotent, and folding twice, late or in any order
gives the same row. Ingest decides when it runs (`Settings.ingest_fold`):

- `inline` (always on SQLite): the ingest transaction folds the generations it touched before it commits.
- `deferred` (the Postgres default): the ingest transaction only appends its events and one `fold_queue` row naming
  the generations it touched, in one statement (feedback/service.py). The API's fold worker (`api/fold_worker.py`)
  folds what queued shortly after each commit, in large set-based batches (a generation and its feedback, posted
  back to back, fold in one write). Every reader of `generations` first calls `settle`, which folds what is still
  queued for what it reads (or waits for the folder that holds it), so a read that follows a 2xx sees every event
  that the 2xx acknowledged.
  Nothing queued is lost: the queue row commits with its events, and a folder or a reader deletes it only in the
  transaction that writes the fold.

Locks (Postgres): before it reads the events, a fold takes a transaction-scoped advisory lock on the hash bucket of
each generation it folds, all of them in ascending order, so two folds of one generation are serialized and the later
one reads what the earlier one read and more. Buckets, not generations: the shared lock table holds about 64 locks
per connection on a stock server, and a lock per generation in a fold of thousands ran it out for every transaction,
ingest included; a fold holds at most `LOCK_BUCKETS`, its own connection's share. The background folder claims queue
rows with SKIP LOCKED; readers wait for them."""

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from sqlalchemy import Table, bindparam, text, update
from sqlalchemy.orm import Session, sessionmaker

from core.db import utcnow
from core.settings import Settings
from feedback.bulk import BulkWriter, dbapi_sql, pg_fetch
from feedback.join import FEEDBACK_CODE, ROW_CODE, derive, empty_row, merge
from feedback.models import FeedbackEvent, Generation

_GEN = cast(Table, Generation.__table__)
_WRITE_GENERATIONS = BulkWriter(
    _GEN,
    [c.name for c in _GEN.columns if c.name != "id"],
    conflict=["project_id", "generation_id"],
    update=[c.name for c in _GEN.columns if c.name not in ("id", "project_id", "generation_id", "created_at")],
)

# Readers: what is queued for a project (or for some of its generations). Without SKIP LOCKED: a row that a folder
# holds is waited for, and once that folder commits, the row is gone and its generations are folded.
_SETTLE_PROJECT = text("DELETE FROM fold_queue WHERE project_id = :p RETURNING project_id, generation_ids")
_SETTLE_SOME = text(
    "DELETE FROM fold_queue WHERE project_id = :p AND jsonb_exists_any(generation_ids, CAST(:g AS text[]))"
    " RETURNING project_id, generation_ids"
)
# The folder: the oldest rows that nobody else holds.
_CLAIM = text(
    "DELETE FROM fold_queue WHERE id IN (SELECT id FROM fold_queue ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED)"
    " RETURNING project_id, generation_ids"
)
# The fold's statements on Postgres run on the psycopg connection (bulk.pg_fetch). The ids stay a text[] parameter:
# as one JSON array, unnested by json_array_elements_text, they cost less Python but the planner, not knowing how
# many there are, read the events with a worse plan (Postgres CPU per folded event x3).
# The two-int4 form keeps the buckets apart from the one-bigint advisory locks of the row build.
LOCK_BUCKETS = 64  # the per-connection share of a stock server's lock table (max_locks_per_transaction)
_LOCK_SPACE = 0x466F6C64  # "Fold"
_LOCK = dbapi_sql(
    text("SELECT pg_advisory_xact_lock(:space, b) FROM (SELECT unnest(CAST(:buckets AS int[])) AS b ORDER BY b) AS s")
)
_PG_EVENTS = dbapi_sql(
    text(
        "SELECT e.id, e.generation_id, e.event_id, e.type, e.occurred_at, e.received_at, CAST(e.payload AS text),"
        " CAST(e.secrets AS text), e.excluded FROM feedback_events e JOIN unnest(CAST(:gids AS text[])) AS ids(gid)"
        " ON e.generation_id = ids.gid WHERE e.project_id = :p"
    )
)
_SQLITE_EVENTS = text(
    "SELECT id, generation_id, event_id, type, occurred_at, received_at, CAST(payload AS TEXT),"
    " CAST(secrets AS TEXT), excluded FROM feedback_events WHERE project_id = :p AND generation_id IN :gids"
).bindparams(bindparam("gids", expanding=True))

Claims = dict[int, set[str]]  # project id -> generation ids


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def inline(session: Session, settings: Settings) -> bool:
    """Whether ingest folds in its own transaction: on SQLite always (one writer at a time: nothing to gain)."""
    return settings.ingest_fold == "inline" or not _pg(session)


def _claimed(rows: Iterable[Any]) -> Claims:
    claims: Claims = {}
    for project_id, ids in rows:
        claims.setdefault(project_id, set()).update(ids)
    return claims


def settle(session: Session, project_id: int, generation_ids: Iterable[str] | None = None) -> int:
    """Before reading `generations`: fold what is queued for the project (or for these of its generations), waiting
    for any folder that holds some of it. Returns the number of generations folded. The caller commits."""
    if not _pg(session):
        return 0  # SQLite folds inline
    if generation_ids is None:
        claims = _claimed(session.execute(_SETTLE_PROJECT, {"p": project_id}))
    else:
        ids = sorted(set(generation_ids))
        if not ids:
            return 0
        claims = _claimed(session.execute(_SETTLE_SOME, {"p": project_id, "g": ids}))
    return fold(session, claims)


def fold_queued(session: Session, rows: int) -> tuple[int, int]:
    """The background folder's step: fold the oldest `rows` queue rows that no one else holds. Returns (queue rows
    taken, generations folded). The caller commits."""
    taken = list(session.execute(_CLAIM, {"n": rows}))
    return len(taken), fold(session, _claimed(taken))


def drain(sessions: sessionmaker[Session], rows: int) -> int:
    """Fold the whole queue (what no one else holds), `rows` queue rows per transaction; returns the generations
    folded. The API's folder and `editloop db fold` both run this."""
    folded = 0
    while True:
        with sessions() as session:
            taken, n = fold_queued(session, rows)
            session.commit()
        folded += n
        if taken < rows:
            return folded


def backlog(session: Session) -> dict[str, Any]:
    """How far the fold is behind: queued rows and the age of the oldest (seconds), all projects."""
    if not _pg(session):
        return {"rows": 0, "oldest_s": None}
    n, oldest = session.execute(text("SELECT count(*), min(queued_at) FROM fold_queue")).one()
    age = (utcnow() - oldest).total_seconds() if oldest is not None else None
    return {"rows": int(n), "oldest_s": age}


def fold(session: Session, claims: Claims) -> int:
    """Recompute these generations from all of their events and write them; returns how many were written."""
    pg = _pg(session)
    ids = {project_id: sorted(gids) for project_id, gids in sorted(claims.items()) if gids}
    if pg and ids:  # every bucket of every project in one statement: one global order, whatever the claims
        pg_fetch(session, _LOCK, {"space": _LOCK_SPACE, "buckets": lock_buckets(ids)}, rows=False)
    now = utcnow()
    written = 0
    for project_id, gids in ids.items():
        events: Sequence[Any]
        if pg:
            events = pg_fetch(session, _PG_EVENTS, {"p": project_id, "gids": gids})
        else:
            events = session.execute(_SQLITE_EVENTS, {"p": project_id, "gids": gids}).all()
        rows = _recompute(session, project_id, events, now)
        _WRITE_GENERATIONS.write(session, rows)
        written += len(rows)
    return written


def lock(session: Session, ids: dict[int, list[str]]) -> None:
    """Take the bucket locks that a fold of these generations takes (Postgres), for work that must not interleave
    with their fold (a deletion)."""
    pg_fetch(session, _LOCK, {"space": _LOCK_SPACE, "buckets": lock_buckets(ids)}, rows=False)


def lock_buckets(ids: dict[int, list[str]]) -> list[int]:
    """The sorted buckets a fold of these generations locks: one per distinct crc32(project:generation) modulo
    LOCK_BUCKETS, the same in every process."""
    return sorted({zlib.crc32(f"{p}:{g}".encode()) % LOCK_BUCKETS for p, gids in ids.items() for g in gids})


def _recompute(session: Session, project_id: int, events: Sequence[Any], now: datetime) -> list[dict[str, Any]]:
    by_generation: dict[str, list[Any]] = {}
    for event in events:
        by_generation.setdefault(event[1], []).append(event)
    out = []
    for generation_id in sorted(by_generation):
        stored = by_generation[generation_id]
        row = empty_row(project_id, generation_id, min(_utc(e[5]) for e in stored))
        secrets: Counter[str] = Counter()
        excluded = any(e[8] for e in stored)
        code_to_redact = []
        for pk, _, event_id, kind, occurred_at, _, payload_text, secrets_text, _ in stored:
            payload = orjson.loads(payload_text)
            if excluded and any(field in payload for field in FEEDBACK_CODE):
                payload = {k: v for k, v in payload.items() if k not in FEEDBACK_CODE}
                code_to_redact.append((pk, payload))
            merge(row, kind, event_id, _utc(occurred_at), payload, pk)
            if secrets_text:
                secrets.update(orjson.loads(secrets_text))
        row["excluded"] = excluded
        row["secrets_redacted"] = dict(secrets)
        for pk, kept in code_to_redact:  # feedback stored before its generation revealed an excluded path
            session.execute(update(FeedbackEvent).where(FeedbackEvent.id == pk).values(payload=kept))
        derive(row)
        for field in ROW_CODE:  # stays in the winning events' payloads (feedback/texts.py reads it from there)
            del row[field]
        row["updated_at"] = now
        out.append(row)
    return out


def _utc(value: Any) -> datetime:
    """Timestamps come back as datetimes from Postgres and as text from SQLite's raw rows."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
