"""A project's row build split into partitions that any number of workers build at once (Postgres only).

`plan_build` cuts the project's prompt groups into `parts` partitions by a stable hash of `prompt_hash` (rows are
derived per prompt group, so a group never spans two) and stores one `dataset_build_partitions` row each. A worker
claims a partition with a conditional update (`claim`), builds it in one transaction that also marks it done
(`build_partition`), and whoever sees the last one done finishes the build (`finish`): one `dataset_builds` row
whose report sums the partitions'. The rows are the state and the messages only nudges: a lost message leaves a
partition queued for the next worker, a duplicate finds it claimed, and a killed worker's transaction rolls back
with its advisory lock gone, so the partition is claimed again once its claim is stale. The result is the rows a
one-process `build_rows` makes.

Concurrency: partitions hold the project's build lock shared, `build_rows` holds it exclusive, so a one-process
build never interleaves with a partitioned one; one partition is built by one transaction at a time (its own
try-lock). The one step that crosses partitions, a generation that moved to a prompt of another partition, leaves
its old group to `finish`, which re-derives those groups alone with the whole project in scope.

Watermark: every partition reads from the plan's `since`; the build's watermark is the latest generation read, but
no later than the plan's `until` (its start), since partitions run at different times and a generation changed
after one partition read may be one that partition owns.
"""

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, cast, func, select, text, update
from sqlalchemy.dialects.postgresql import BIT
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger

from core.db import session_scope, utcnow
from core.errors import InvalidInput, NotFound
from core.projects import Project
from feedback import derivation
from feedback.config import DatasetConfig
from feedback.fold import settle
from feedback.models import DatasetBuild, DatasetBuildPartition
from feedback.rows import _GEN, OVERLAP, _Build, _config, _gc_paused, _has_statistics, _lz4_available, _Page, _set_local

STALE = timedelta(minutes=10)  # a running partition's claim older than this is taken over: its worker died
_P = DatasetBuildPartition
_LOCK = "hashtextextended('build:' || CAST(:p AS text), 0)"  # the key of build_rows' lock


def part_of(prompt_hash: str | None, parts: int) -> int:
    """A prompt group's partition: its hash's first 32 bits modulo `parts` (no prompt: partition 0)."""
    return int(prompt_hash[:8], 16) % parts if prompt_hash else 0


def _part_sql(column: Any, parts: int) -> Any:
    """`part_of` in SQL."""
    bits = cast(func.concat("x", func.substr(column, 1, 8)), BIT(32))
    return func.coalesce(cast(bits, BigInteger()).op("%")(parts), 0)


class _PartBuild(_Build):
    """A build that reads only the generations of one partition. Rows are looked up project-wide (a generation's
    old rows may name a group of another partition); groups of other partitions are left to `finish`."""

    def __init__(self, session: Session, part: DatasetBuildPartition, config: DatasetConfig) -> None:
        self.part, self.parts, self.foreign = part.part, part.parts, set[str]()
        super().__init__(session, part.project_id, config, part.started_at, pg=True)

    def scope(self, table: Table) -> Any:
        if table is _GEN:
            return and_(super().scope(table), _part_sql(table.c.prompt_hash, self.parts) == self.part)
        return super().scope(table)

    def _add_groups(self, gens: dict[int, Any], hashes: set[str]) -> list[Any]:
        mine = {h for h in hashes if part_of(h, self.parts) == self.part}
        self.foreign |= hashes - mine
        return super()._add_groups(gens, mine)

    def _analyze(self) -> bool:
        """ANALYZE takes a lock that another ANALYZE waits for until its transaction ends: partitions building at
        once would run one after the other. So it is tried without waiting, and while another partition holds it,
        the statistics it commits are waited for instead (the planner reads the latest committed ones)."""
        if _has_statistics(self.session, "training_rows"):
            return True
        previous = _set_local(self.session, "lock_timeout", "20ms")
        try:
            with self.session.begin_nested():
                self.session.execute(text("ANALYZE training_rows"))
            return True
        except OperationalError:  # lock_not_available: another partition is analyzing
            return False
        finally:
            _set_local(self.session, "lock_timeout", previous)


def plan_build(session: Session, project_id: int, parts: int, *, now: datetime | None = None) -> str:
    """Plan a partitioned build of the project; returns the plan id (an unfinished plan's, if one exists)."""
    if session.get_bind().dialect.name != "postgresql":
        raise InvalidInput("partitioned builds need Postgres; build_rows builds in one process")
    if parts < 1:
        raise InvalidInput("parts: must be at least 1")
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    session.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK})"), {"p": project_id})
    pending = session.scalar(select(_P.plan).where(_P.project_id == project_id, _P.build_id.is_(None)).limit(1))
    if pending is not None:
        return pending
    settle(session, project_id)  # events that deferred ingest has not folded yet, as build_rows does
    version = derivation.version(_config(project))
    last = session.execute(
        select(DatasetBuild.watermark, DatasetBuild.report)
        .where(DatasetBuild.project_id == project_id, DatasetBuild.finished_at.is_not(None))
        .order_by(DatasetBuild.id.desc())
        .limit(1)
    ).first()
    since = None
    if last is not None and last.watermark is not None and (last.report or {}).get("derivation") == version:
        since = last.watermark - OVERLAP
    started = now or utcnow()
    plan = uuid.uuid4().hex
    for part in range(parts):
        session.add(
            _P(
                project_id=project_id,
                plan=plan,
                part=part,
                parts=parts,
                state="queued",
                started_at=started,
                since=since,
                until=started,
            )
        )
    session.flush()
    return plan


def claim(session: Session, partition_id: int, worker: str, stale: timedelta = STALE) -> bool:
    """Claim a partition that is queued, or running under a claim older than `stale`."""
    now = utcnow()
    claimed = session.execute(
        update(_P)
        .where(
            _P.id == partition_id,
            (_P.state == "queued") | ((_P.state == "running") & (_P.claimed_at < now - stale)),
        )
        .values(state="running", claimed_by=worker, claimed_at=now)
        .returning(_P.id)
    ).first()
    return claimed is not None


def build_partition(url: str, partition_id: int, worker: str, stale: timedelta = STALE) -> bool:
    """Claim and build one partition, then finish the build if it was the last. Returns whether it built it."""
    with session_scope(url) as session:
        if not claim(session, partition_id, worker, stale):
            return False
    with session_scope(url) as session:
        # One builder per partition: a worker whose claim was taken over may still be running. The state is read
        # under the lock, so a partition that another builder finished meanwhile is not built again.
        lock = text("SELECT pg_try_advisory_xact_lock(hashtextextended('build-part:' || CAST(:i AS text), 0))")
        if not session.scalar(lock, {"i": partition_id}):
            return False
        part = session.get(_P, partition_id)
        assert part is not None
        if part.state != "running":
            return False
        session.execute(text(f"SELECT pg_advisory_xact_lock_shared({_LOCK})"), {"p": part.project_id})
        project = session.get(Project, part.project_id)
        if project is None:
            raise NotFound(f"project {part.project_id} does not exist")
        build = _PartBuild(session, part, _config(project))
        with _build_settings(session):
            build.run(part.since, 5000)
        report = build.report()
        report["read"], report["foreign"] = build.read, sorted(build.foreign)
        part.state, part.report = "done", report
        part.watermark = min(build.watermark, part.until) if build.watermark is not None else None
        plan = part.plan
    finish(url, plan)
    return True


def finish(url: str, plan: str) -> int | None:
    """Complete the plan's build once every partition is done; returns the build id (None while some are not)."""
    with session_scope(url) as session:
        first = session.scalars(select(_P).where(_P.plan == plan).limit(1)).first()
        if first is None:
            raise NotFound(f"build plan {plan} does not exist")
        # Checked before the lock: the exclusive lock waits for every partition being built (they hold it shared),
        # and a worker would wait there instead of claiming the next partition.
        if session.scalar(select(func.count()).where(_P.plan == plan, _P.state != "done")):
            return None
        session.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK})"), {"p": first.project_id})
        parts = session.scalars(select(_P).where(_P.plan == plan).order_by(_P.part).with_for_update()).all()
        if parts[0].build_id is not None:
            return parts[0].build_id
        if any(p.state != "done" for p in parts):
            return None
        project = session.get(Project, first.project_id)
        assert project is not None
        reports = [p.report or {} for p in parts]
        foreign = sorted({h for r in reports for h in r.get("foreign", [])})
        fixup = _Build(session, project.id, _config(project), first.started_at, pg=True)
        if foreign:  # old groups of generations that moved across partitions, re-derived whole
            with _build_settings(session):
                gens: dict[int, Any] = {}
                fixup._add_groups(gens, set(foreign))
                if gens:
                    page = _Page(gens)
                    fixup._derive(page)
                    fixup._write(page)
        report = _sum_reports([*reports, fixup.report()])
        last = session.scalar(
            select(DatasetBuild.watermark)
            .where(DatasetBuild.project_id == project.id, DatasetBuild.finished_at.is_not(None))
            .order_by(DatasetBuild.id.desc())
            .limit(1)
        )
        record = DatasetBuild(
            project_id=project.id,
            started_at=first.started_at,
            finished_at=utcnow(),
            watermark=max(filter(None, [*(p.watermark for p in parts), last]), default=None),
            generations_read=sum(r.get("read", 0) for r in reports),
            rows_added=sum(report["added"].values()),
            rows_changed=sum(report["changed"].values()),
            rows_removed=sum(report["removed"].values()),
            report=report,
        )
        session.add(record)
        session.flush()
        for p in parts:
            p.build_id = record.id
        return record.id


def _sum_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The build's report: the partitions' counters summed (phase seconds too: CPU time across workers)."""
    out: dict[str, Any] = {}
    for key in ("gates", "rows", "added", "changed", "removed", "seconds"):
        total: Counter[str] = Counter()
        for r in reports:
            total.update(r.get(key, {}))
        out[key] = {k: round(v, 3) if key == "seconds" else v for k, v in total.items()}
    out["generations_derived"] = sum(r.get("generations_derived", 0) for r in reports)
    out["derivation"] = reports[-1]["derivation"]
    out["overlap_s"] = OVERLAP.total_seconds()
    out["partitions"] = len(reports) - 1
    return out


def work(url: str, plan: str, worker: str, stale: timedelta = STALE) -> int:
    """A worker's loop over one plan: claim and build partitions until none is left to claim; returns how many it
    built. (The Celery task builds one partition per message; this is the same steps for a worker process.)"""
    built = 0
    while True:
        with session_scope(url) as session:
            ids = session.scalars(
                select(_P.id)
                .where(
                    _P.plan == plan,
                    (_P.state == "queued") | ((_P.state == "running") & (_P.claimed_at < bindparam("s"))),
                )
                .order_by(_P.part),
                {"s": utcnow() - stale},
            ).all()
        if not ids:
            return built
        progressed = False
        for partition_id in ids:
            if build_partition(url, partition_id, worker, stale):
                built, progressed = built + 1, True
        if not progressed:
            return built


def pending(session: Session, project_id: int) -> list[tuple[str, int]]:
    """(plan, partition id) of the project's unfinished partitions: what a sweeper nudges again."""
    query = select(_P.plan, _P.id).where(_P.project_id == project_id, _P.build_id.is_(None), _P.state != "done")
    return [(plan, pid) for plan, pid in session.execute(query).all()]


@contextmanager
def _build_settings(session: Session) -> Iterator[None]:
    """The session settings build_rows takes (see there), for the rest of the transaction."""
    if not _has_statistics(session, "generations"):
        session.execute(text("ANALYZE generations"))
    if _lz4_available(session):
        _set_local(session, "default_toast_compression", "lz4")
    _set_local(session, "TimeZone", "UTC")
    _set_local(session, "jit", "off")
    with _gc_paused():
        yield
