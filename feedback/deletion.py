"""Deletion requests: the walk that takes selected data out of everything derived from it.

A request selects generations (by user, session, ids, file path glob, or age) and walks, in short transactions:
1. `generations`: a batch of matching generations at a time, their generation ids noted in `deletion_items`, then
   their events and the joined rows deleted (under the fold's bucket locks, so a concurrent fold either finished
   first or finds nothing);
2. `rows`: the training rows derived from a noted generation (a choice pair from either of its two);
3. `snapshots`: the snapshot rows likewise, then each snapshot that lost rows is re-hashed, keeping its original
   hash and a record of the redaction;
4. `exports`: export folders written from those snapshots (snapshot_exports) are written again without the rows;
5. `versions`: adapter versions trained on those snapshots are flagged (trainers/rights.py: feedback cannot see
   them); then the notes are dropped and the selector's values replaced by their digests.
Each step moves the request's `phase` and `cursor` in the transaction that does the work, so a crash resumes at
the last committed step, and repeating a step finds nothing more to do. Ingest never waits on a step: steps delete
rows that ingest does not write, and take only the fold's short bucket locks."""

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import Table, bindparam, delete, func, select, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from core.db import dialect_insert, utcnow
from core.errors import Conflict, InvalidInput, NotFound
from feedback import fold
from feedback.models import DatasetSnapshot, FeedbackEvent, Generation
from feedback.rights_models import DeletionItem, DeletionRequest, SnapshotExport
from feedback.service import is_excluded
from feedback.snapshots import export_snapshot, redigest

SELECTORS = ("user", "session", "generation_ids", "file_path", "before")
PHASES = ("generations", "rows", "snapshots", "hashes", "exports", "versions", "done")
ACTIVE = ("queued", "running")
GENERATION_BATCH = 500
SCAN_BATCH = 5000
MAX_GENERATION_IDS = 10_000

_GEN: Table = Generation.__table__  # type: ignore[assignment]
_ITEMS: Table = DeletionItem.__table__  # type: ignore[assignment]


def parse_selector(raw: Any) -> dict[str, Any]:
    """Exactly one selector, checked; `before` is stored as an ISO 8601 UTC time."""
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in SELECTORS:
        raise InvalidInput(f"selector: give exactly one of {', '.join(SELECTORS)}")
    ((kind, value),) = raw.items()
    if kind == "generation_ids":
        if not isinstance(value, list) or not value or len(value) > MAX_GENERATION_IDS:
            raise InvalidInput(f"generation_ids: a list of 1-{MAX_GENERATION_IDS} generation ids")
        if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value):
            raise InvalidInput("generation_ids: each must be a string of 1-200 characters")
        return {kind: sorted(set(value))}
    if kind == "before":
        if isinstance(value, datetime):
            when = value
        elif isinstance(value, str):
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidInput("before: not an ISO 8601 time") from None
        else:
            raise InvalidInput("before: not an ISO 8601 time")
        try:
            when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        except OverflowError:
            raise InvalidInput("before: out of range") from None
        return {kind: when.isoformat()}
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise InvalidInput(f"{kind}: a string of 1-1024 characters")
    return {kind: value}


def create_request(
    session: Session, project_id: int, selector: Any, *, trigger: str, actor: str, now: datetime | None = None
) -> DeletionRequest:
    request = DeletionRequest(
        project_id=project_id,
        selector=parse_selector(selector),
        trigger=trigger,
        state="queued",
        phase="generations",
        cursor=0,
        counts={},
        snapshots={},
        requested_by=actor,
        steps=0,
        created_at=now or utcnow(),
    )
    session.add(request)
    session.flush()
    return request


def get_request(session: Session, project_id: int, request_id: int) -> DeletionRequest:
    request = session.get(DeletionRequest, request_id)
    if request is None or request.project_id != project_id:
        raise NotFound(f"deletion request {request_id} does not exist")
    return request


def list_requests(session: Session, project_id: int, limit: int = 50) -> list[DeletionRequest]:
    query = select(DeletionRequest).where(DeletionRequest.project_id == project_id)
    return list(session.scalars(query.order_by(DeletionRequest.id.desc()).limit(limit)))


def lock(session: Session, request_id: int) -> DeletionRequest | None:
    """The request, locked for one step; None if it is finished, or if another worker is in a step of it (that one
    carries on: the message that brought this one was a duplicate)."""
    request = session.scalar(
        select(DeletionRequest)
        .where(DeletionRequest.id == request_id, DeletionRequest.state.in_(ACTIVE))
        .with_for_update(skip_locked=True)
    )
    if request is not None and request.state == "queued":
        request.state, request.started_at = "running", utcnow()
    return request


def step(session: Session, request: DeletionRequest) -> None:
    """One short piece of the request's current phase (up to `versions`, which trainers/rights.py does). The caller
    locked the request (`lock`) and commits."""
    request.steps += 1
    request.heartbeat_at = utcnow()
    if request.phase == "generations":
        _generations(session, request)
    elif request.phase == "rows":
        _rows(session, request)
    elif request.phase == "snapshots":
        _snapshot_rows(session, request)
    elif request.phase == "hashes":
        _hashes(session, request)
    elif request.phase == "exports":
        _exports(session, request)
    else:
        raise Conflict(f"deletion request {request.id}: phase {request.phase!r} is not the feedback walk's")


def finish(session: Session, request: DeletionRequest) -> None:
    """Drop the notes of removed generation ids and keep only digests of the selector's values."""
    session.execute(delete(DeletionItem).where(DeletionItem.request_id == request.id))
    request.selector = digest_selector(request.selector)
    request.phase, request.state, request.finished_at = "done", "done", utcnow()


def fail(session: Session, request: DeletionRequest, error: str) -> None:
    request.state, request.error, request.finished_at = "failed", error[:4000], utcnow()


def digest_selector(selector: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, value in selector.items():
        if kind == "before" or (isinstance(value, str) and value.startswith("sha256:")) or isinstance(value, dict):
            out[kind] = value
        elif isinstance(value, list):
            out[kind] = {"count": len(value), "sha256": hashlib.sha256(orjson.dumps(value)).hexdigest()}
        else:
            out[kind] = "sha256:" + hashlib.sha256(str(value).encode()).hexdigest()
    return out


def _advance(request: DeletionRequest, phase: str) -> None:
    request.phase, request.cursor = phase, 0


def _count(request: DeletionRequest, **added: int) -> None:
    counts = dict(request.counts or {})
    for kind, n in added.items():
        counts[kind] = counts.get(kind, 0) + n
    request.counts = counts


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _matching(session: Session, request: DeletionRequest) -> tuple[list[tuple[int, str]], int | None]:
    """The next matching generations after the cursor, and the id the cursor moves to (None: no more)."""
    g = _GEN.c
    selector = request.selector
    query = select(g.id, g.generation_id, g.file_path).where(g.project_id == request.project_id, g.id > request.cursor)
    limit = GENERATION_BATCH
    if "user" in selector:
        query = query.where(g.user == selector["user"])
    elif "session" in selector:
        query = query.where(g.session == selector["session"])
    elif "generation_ids" in selector:
        query = query.where(g.generation_id.in_(selector["generation_ids"]))
    elif "before" in selector:
        query = query.where(func.coalesce(g.shown_at, g.created_at) < datetime.fromisoformat(selector["before"]))
    else:  # a glob: matched here as ingest matches excluded paths (the path or its file name)
        query = query.where(g.file_path.is_not(None))
        limit = SCAN_BATCH
    found = session.execute(query.order_by(g.id).limit(limit)).all()
    if not found:
        return [], None
    if "file_path" in selector:
        return [(pk, gid) for pk, gid, path in found if is_excluded(path, [selector["file_path"]])], found[-1][0]
    return [(pk, gid) for pk, gid, _ in found], found[-1][0]


def _generations(session: Session, request: DeletionRequest) -> None:
    if request.cursor == 0:
        fold.settle(session, request.project_id)  # what ingest acknowledged is in `generations` before we select
    batch, last = _matching(session, request)
    if last is None:
        _advance(request, "rows")
        return
    if batch:
        gids = sorted({gid for _, gid in batch})
        if _pg(session):  # the fold's own locks: a fold of these generations finished, or will find no events
            fold.lock(session, {request.project_id: gids})
        insert = dialect_insert(session, _ITEMS).values([{"request_id": request.id, "generation_id": g} for g in gids])
        session.execute(insert.on_conflict_do_nothing())
        events = _rowcount(
            session.execute(
                delete(FeedbackEvent).where(
                    FeedbackEvent.project_id == request.project_id, FeedbackEvent.generation_id.in_(gids)
                )
            )
        )
        generations = _rowcount(
            session.execute(
                delete(Generation).where(
                    Generation.project_id == request.project_id, Generation.generation_id.in_(gids)
                )
            )
        )
        _count(request, events=events, generations=generations)
    request.cursor = last


def _hits(session: Session, request: DeletionRequest, source: str, scope: str) -> tuple[list[tuple[int, int]], int]:
    """Rows of `source` (training_rows or snapshot_rows, `scope` limits it to the project) in the next chunk after the
    cursor that name a removed generation: (id, snapshot id or 0); and the chunk's last id (0: no more)."""
    column = "r.snapshot_id" if source == "snapshot_rows" else "0"
    chunk = session.execute(
        text(
            f"SELECT r.id, {column}, r.generation_ids FROM {source} r WHERE {scope} AND r.id > :c"
            " ORDER BY r.id LIMIT :n"
        ),
        {"p": request.project_id, "c": request.cursor, "n": SCAN_BATCH},
    ).all()
    if not chunk:
        return [], 0
    rows = [(int(pk), int(sid), _ids(gids)) for pk, sid, gids in chunk]
    # The noted ids among those the chunk names, looked up by key: a join in SQL was planned as a scan of every
    # noted id per row while deletion_items had no statistics (30 s per chunk at 50,000 ids).
    named = sorted({gid for _, _, gids in rows for gid in gids})
    noted = set(
        session.scalars(
            select(DeletionItem.generation_id).where(
                DeletionItem.request_id == request.id, DeletionItem.generation_id.in_(named)
            )
        )
    )
    return [(pk, sid) for pk, sid, gids in rows if noted.intersection(gids)], rows[-1][0]


def _ids(value: Any) -> list[str]:
    """A JSON column read through `text()`: a list from Postgres' driver, a string from SQLite's."""
    return list(orjson.loads(value) if isinstance(value, str | bytes) else value)


def _delete_ids(session: Session, table: str, ids: list[int]) -> int:
    if not ids:
        return 0
    query = text(f"DELETE FROM {table} WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
    return _rowcount(session.execute(query, {"ids": ids}))


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


def _rows(session: Session, request: DeletionRequest) -> None:
    if request.cursor == 0 and _pg(session):
        # A build that read the removed generations before they went may still be writing rows from them: wait
        # for it (feedback/tasks.py holds this lock per build). Builds that start later cannot see them.
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('build:' || CAST(:p AS text), 0))"),
            {"p": request.project_id},
        )
    hits, hi = _hits(session, request, "training_rows", "r.project_id = :p")
    if not hi:
        _advance(request, "snapshots")
        return
    _count(request, training_rows=_delete_ids(session, "training_rows", [pk for pk, _ in hits]))
    request.cursor = hi


def _snapshot_rows(session: Session, request: DeletionRequest) -> None:
    scope = "r.snapshot_id IN (SELECT id FROM dataset_snapshots WHERE project_id = :p)"
    hits, hi = _hits(session, request, "snapshot_rows", scope)
    if not hi:
        _advance(request, "hashes")
        return
    removed = _delete_ids(session, "snapshot_rows", [pk for pk, _ in hits])
    if removed:
        per = dict(request.snapshots or {})
        for _, snapshot_id in hits:
            per[str(snapshot_id)] = per.get(str(snapshot_id), 0) + 1
        request.snapshots = per
        _count(request, snapshot_rows=removed)
    request.cursor = hi


def _hashes(session: Session, request: DeletionRequest) -> None:
    """One snapshot per step: its hash, counts and row count describe what remains; the redaction is recorded."""
    pending = sorted(int(s) for s in (request.snapshots or {}) if int(s) > request.cursor)
    if not pending:
        _advance(request, "exports")
        return
    snapshot = session.get(DatasetSnapshot, pending[0], with_for_update=True)
    if snapshot is not None:
        before = snapshot.sha256
        snapshot.sha256, snapshot.counts, snapshot.row_count = redigest(session, snapshot.id)
        snapshot.original_sha256 = snapshot.original_sha256 or before
        record = {
            "deletion_id": request.id,
            "rows_removed": request.snapshots[str(snapshot.id)],
            "sha256_before": before,
            "sha256_after": snapshot.sha256,
            "at": utcnow().isoformat(),
        }
        snapshot.redactions = [*(snapshot.redactions or []), record]
        _count(request, snapshots_redacted=1)
    request.cursor = pending[0]


def _exports(session: Session, request: DeletionRequest) -> None:
    """Export folders of the redacted snapshots that still hold that snapshot's export are written again; the files
    the rows were in are replaced. A folder since overwritten by another export, or removed, is left alone."""
    snapshot_ids = sorted(int(s) for s in (request.snapshots or {}))
    exports = session.scalars(
        select(SnapshotExport)
        .where(SnapshotExport.snapshot_id.in_(snapshot_ids), SnapshotExport.id > request.cursor)
        .order_by(SnapshotExport.id)
        .limit(20)
    ).all()
    if not exports:
        _advance(request, "versions")
        return
    for export in exports:
        folder = Path(export.path)
        if _holds_export(folder, export.project_id, export.snapshot_id):
            written = export_snapshot(session, export.project_id, export.snapshot_id, folder, export.format)  # type: ignore[arg-type]
            _count(request, export_folders_rewritten=1, export_files_written=len(written))
    request.cursor = exports[-1].id


def _holds_export(folder: Path, project_id: int, snapshot_id: int) -> bool:
    try:
        manifest = orjson.loads((folder / "manifest.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(manifest, dict) and (manifest.get("project_id"), manifest.get("snapshot_id")) == (
        project_id,
        snapshot_id,
    )


def record_export(
    session: Session, project_id: int, snapshot_id: int, folder: Path, fmt: str, actor: str
) -> SnapshotExport:
    export = SnapshotExport(
        project_id=project_id,
        snapshot_id=snapshot_id,
        path=str(folder.resolve()),
        format=fmt,
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(export)
    session.flush()
    return export


def active_request(session: Session, project_id: int, trigger: str) -> DeletionRequest | None:
    query = select(DeletionRequest).where(
        DeletionRequest.project_id == project_id,
        DeletionRequest.trigger == trigger,
        DeletionRequest.state.in_(ACTIVE),
    )
    return session.scalars(query.limit(1)).first()


def stalled(session: Session, older_than: datetime) -> list[int]:
    """Active requests with no step since `older_than`: their worker died, or their message was lost."""
    query = select(DeletionRequest.id).where(
        DeletionRequest.state.in_(ACTIVE),
        func.coalesce(DeletionRequest.heartbeat_at, DeletionRequest.created_at) < older_than,
    )
    return list(session.scalars(query))
