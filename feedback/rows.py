"""Training rows from the generation join, in TRL's formats: edit pairs, choice pairs, KTO rows and SFT rows.

`build_rows` is incremental. It reads the generations changed since the project's last finished build (from
OVERLAP before its watermark: an ingest transaction that stamped its rows earlier may commit after that build
read), re-derives the whole prompt group of each (choice pairs and near-duplicates depend on the other generations
of a prompt), and writes rows keyed by (kind, source_key) with a content hash: a row that comes out the same is not
written, and a row that a re-derived generation no longer yields is set inactive. Rebuilding is idempotent, so
re-reading the overlap costs time, never correctness. When the gates change (the project's DatasetConfig, or
DERIVATION_VERSION), the next build re-derives everything. It works a page of generations at a time, with a few
queries and one write per page; on Postgres the next page is read, and the last one written, on a second thread
while this one derives.

What a generation yields (from its join row and its prompt group alone, so never from the order of events):
- `edit_pair` `edit:{gid}`: prompt, chosen = the user's final text, rejected = the model's completion (edited).
- `sft` `sft:{gid}`: prompt -> the user's final text, for edits only. Accepted completions are the model's own
  output: SFT on them is self-distillation, which reinforces the model's habits and would outnumber the edits;
  their signal goes into KTO (label true) and choice pairs instead.
- `kto` `kto:final:{gid}`: the user's final text, label true (edited).
- `kto` `kto:completion:{gid}`: the model's completion, one row per generation (one row per text), labelled by the
  strongest signal: an explicit rating (score > 0 true, < 0 false; 0 says nothing) over the edit (false; true for
  a trivial edit) over the decision (accepted true, rejected false). A rating is the user's own verdict on this very
  text; an edit or a decision is inferred from what they did next.
- `choice_pair` `choice:{accepted}>{rejected}`: within a prompt group, an accepted completion (labelled true) over a
  rejected one (labelled false): each accepted generation with the earliest PAIRS_PER_ACCEPTED rejected ones, so a
  group yields pairs linear in its size. The row's user is the accepted generation's.
- Trivial edits (whitespace only, or distance < min_edit_distance) are accepts in all but name: no edit pair, sft
  or final kto row, and the completion is labelled true. Total rewrites (distance > max_edit_distance) make no edit
  pair; the sft and final kto rows stay, and the completion is labelled false.
Rows keep their generation ids and the ids of the events behind them: the `generation` event, then the edit (edit
pairs, sft, final kto), the event that decided the label (completion kto), or each side's decision and rating
(choice pairs). `occurred_at` is the latest of those events.

Gates, counted in `DatasetBuild.report["gates"]` over the generations this build derived (a generation re-derived
within a build, because its group changed again, counts again). Generation gates count generations, row gates rows.
- excluded; no_prompt (feedback, but no `generation` event yet); secret_in_change (the `<secret:KIND>` placeholders
  of the final text and of the completion differ: a secret sits in the changed region): no rows at all.
- trivial_edit, total_rewrite: as above; the other rows are still made.
- broken_syntax (Python: language "python" or a .py/.pyi path; when check_python_syntax): the final text parses in
  none of the lenient ways while the completion parses in one: no edit pair, sft or final kto row (the completion's
  kto row stays). Lenient, because completions are fragments: as it is, then as the body of a block (what dedenting
  gives, cheaper), then after the prefix (a completion that starts mid-line), then between prefix and suffix; each
  tried only when the ones before failed. The final text is tried first, so a valid edit costs one parse.
- empty (a completion or final text shorter than min_chars once stripped), too_long (a prompt, completion or final
  text longer than max_chars): rows.
- near_duplicate: a row whose texts are each at least near_duplicate_similarity similar (rapidfuzz ratio) to those of
  a kept row of the same kind (and label) and prompt; the earliest is kept (generations in the order they were
  shown). A choice pair is one when its accepted or its rejected completion near-duplicates an earlier completion
  of the same outcome in the group: such a pair repeats a kept one.
- trivial_pair: a choice pair whose two completions differ only trivially (as a trivial edit would).
"""

import gc
import hashlib
import re
import time
import warnings
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

import orjson
from psycopg.adapt import Dumper
from psycopg.postgres import types as pg_types
from psycopg.pq import Format
from pydantic import ValidationError
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Levenshtein
from sqlalchemy import BigInteger, Select, String, and_, any_, cast, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.orm import Session
from sqlalchemy.sql.schema import Table

from core.db import utcnow
from core.errors import InvalidInput, NotFound
from core.projects import Project
from feedback import consent, texts
from feedback.bulk import BulkWriter, pg_fetch
from feedback.config import DatasetConfig
from feedback.fold import settle
from feedback.models import DatasetBuild, Generation, TrainingRow
from feedback.syntax import parses, parses_within

KINDS = ("edit_pair", "choice_pair", "kto", "sft")
GATES = (
    "excluded",
    "no_prompt",
    "secret_in_change",
    "trivial_edit",
    "total_rewrite",
    "broken_syntax",
    "empty",
    "too_long",
    "near_duplicate",
    "trivial_pair",
)
OVERLAP = timedelta(seconds=5)
PAIRS_PER_ACCEPTED = 4
# Bump when a change here changes the rows that feedback yields: the next build of each project re-derives all.
DERIVATION_VERSION = 1

_GEN: Table = Generation.__table__  # type: ignore[assignment]
_ROWS: Table = TrainingRow.__table__  # type: ignore[assignment]


class _Gen(NamedTuple):
    """A generation, as the build reads it. (Not SQLAlchemy's Row: its attribute access costs ten times a
    NamedTuple's, and the build reads some forty attributes per generation.) Columns typed Any may be null, and
    are checked by the generation gates (`_plan`) before the rows use them. The last four are its code, read from
    its winning events' payloads (feedback/texts.py)."""

    id: int
    generation_id: str
    outcome: str
    prompt_hash: Any
    edit_distance: float | None
    language: str | None
    file_path: str | None
    user: str | None
    excluded: bool
    shown_at: datetime
    shown_event_id: Any
    decided_at: datetime
    decision_event_id: Any
    edited_at: datetime
    edited_event_id: Any
    rating_score: float | None
    rated_at: datetime
    rating_event_id: Any
    updated_at: datetime
    prompt: str | None
    messages: list[dict[str, Any]] | None
    completion: Any
    final_text: Any


_CODE = ("prompt", "messages", "completion", "final_text")
_STORED = _Gen._fields[: -len(_CODE)]
_READ = [_GEN.c[name] for name in _STORED]
_OUTCOME, _EXCLUDED = _STORED.index("outcome"), _STORED.index("excluded")


def _code(excluded: bool, outcome: str, payloads: Sequence[str | None]) -> dict[str, Any]:
    """A stored row's code from its three payload texts. A row is "edited" exactly when it has a winning edit, and
    otherwise its outcome is its decision, so the outcome stands for both."""
    return texts.code(excluded, outcome, outcome == "edited", *payloads)


def _gen(raw: Sequence[Any]) -> _Gen:
    """A `_Gen` from a row of `_select` (the stored columns, then the three payload texts)."""
    stored, payloads = raw[: len(_STORED)], raw[len(_STORED) :]
    code = _code(stored[_EXCLUDED], stored[_OUTCOME], payloads)
    return _Gen._make((*stored, code["prompt"], code["messages"], code["completion"], code["final_text"]))


def _select() -> Select[Any]:
    return texts.select_with_code(*_READ)


_COLUMNS = [c.name for c in _ROWS.columns if c.name != "id"]


def _pg_oid(column: Any) -> int:
    """The oid of a column's Postgres type, for binary COPY."""
    info = pg_types.get(column.type.compile(dialect=postgresql.dialect()).lower().split("(")[0])
    assert info is not None, f"{column.name}: no psycopg type"
    return info.oid


_WRITE_ROWS = BulkWriter(
    _ROWS,
    _COLUMNS,
    conflict=["project_id", "kind", "source_key"],
    update=[c for c in _COLUMNS if c not in ("project_id", "kind", "source_key")],
)
_COPY_TYPES = [_pg_oid(_ROWS.c[c]) for c in _COLUMNS]


class _JsonbDumper(Dumper):
    """jsonb in binary COPY by orjson: a version byte, then the text (psycopg's own goes through `json`)."""

    format = Format.BINARY
    oid = _pg_oid(_ROWS.c.event_ids)

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + orjson.dumps(obj)


_QUOTED = ", ".join(f'"{c}"' for c in _COLUMNS)
# New keys go in by binary COPY: half the server time of the upsert, which parses a JSON document and looks for a
# conflict per row, and a third less than COPY's csv, which scans every text for quotes; psycopg formats the rows
# in C. No one else writes this project's rows meanwhile (the build lock).
_COPY_SQL = f"COPY training_rows ({_QUOTED}) FROM STDIN WITH (FORMAT binary)"
_WRITE_CHUNK = 5000
_ANALYZE_AFTER = 1000  # rows written, see _Build.analyze_rows
_SECRET = re.compile(r"<secret:[^<>\s]{1,64}>")
_PYTHON_SUFFIXES = (".py", ".pyi")
_FEEDBACK = frozenset(("accepted", "rejected", "edited"))
_GATE_FIELDS = {
    "min_edit_distance",
    "max_edit_distance",
    "min_chars",
    "max_chars",
    "near_duplicate_similarity",
    "check_python_syntax",
}

Key = tuple[str, str]  # (kind, source_key)


def build_rows(
    session: Session, project_id: int, *, now: datetime | None = None, batch_size: int = 5000
) -> DatasetBuild:
    """Bring the project's training rows up to date with its feedback; returns the build, with its report.
    Never commits; on Postgres it holds the project's build lock until the caller's transaction ends."""
    if batch_size < 1:
        raise InvalidInput("batch_size: must be at least 1")
    started = now or utcnow()
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    config = _config(project)
    pg = session.get_bind().dialect.name == "postgresql"
    restore = restore_zone = None
    if pg:
        # The same key as feedback.tasks' try-lock (advisory locks nest within a session): concurrent builds of
        # a project would re-derive the same groups and both report the same rows as added.
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('build:' || CAST(:p AS text), 0))"),
            {"p": project_id},
        )
        if not _has_statistics(session, "generations"):
            session.execute(text("ANALYZE generations"))
        restore = _lz4(session)
        settle(session, project_id)  # events that deferred ingest has not folded yet (feedback/fold.py)
    build = _Build(session, project_id, config, started, pg)

    last = session.execute(
        select(DatasetBuild.watermark, DatasetBuild.report)
        .where(DatasetBuild.project_id == project_id, DatasetBuild.finished_at.is_not(None))
        .order_by(DatasetBuild.id.desc())
        .limit(1)
    ).first()
    since = None
    # Rows made under other gates (or by an older derivation) are rebuilt from scratch: all is re-read.
    if last is not None and last.watermark is not None and (last.report or {}).get("derivation") == build.derivation:
        since = last.watermark - OVERLAP
    if pg:
        restore_zone = _utc(session)
        # The page reads look up three payloads per generation (feedback/texts.py), which the planner prices past
        # `jit_above_cost`: compiling each page's query took longer than running it (~40 ms against ~50 per 5,000
        # generations). Transaction-local, like the settings above.
        session.execute(text("SELECT set_config('jit', 'off', true)"))
    with _gc_paused():
        build.run(since, batch_size)
    if restore is not None:
        session.execute(text("SELECT set_config('default_toast_compression', :v, true)"), {"v": restore})
    if restore_zone is not None:
        session.execute(text("SELECT set_config('TimeZone', :v, true)"), {"v": restore_zone})

    record = DatasetBuild(
        project_id=project_id,
        started_at=started,
        finished_at=now or utcnow(),
        watermark=max(filter(None, (build.watermark, last.watermark if last is not None else None)), default=None),
        generations_read=build.read,
        rows_added=sum(build.added.values()),
        rows_changed=sum(build.changed.values()),
        rows_removed=sum(build.removed.values()),
        report=build.report(),
    )
    session.add(record)
    session.flush()
    return record


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No full passes of the cyclic garbage collector during the build; the young generations are collected as
    ever. A build keeps ~a million small containers alive a page at a time (rows, generations, plans, event lists),
    and full passes over them took ~1.6 of 17 CPU seconds of a 100,000-generation build, to free ~80,000 objects in
    all. Young collections still free a page's short-lived cycles, so memory stays bounded on a large project;
    what reaches the old generation waits for the build's end."""
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], FULL_COLLECTIONS_OFF)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


FULL_COLLECTIONS_OFF = 2**30  # young-generation collections before a full one: never, in a build


def _config(project: Project) -> DatasetConfig:
    try:
        return DatasetConfig.model_validate((project.settings or {}).get("dataset", {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(f"settings.dataset.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None


def _has_statistics(session: Session, table: str) -> bool:
    """Whether the planner knows the table: it holds rows (never analyzed is -1, analyzed while empty is 0) and
    has column statistics (ANALYZE sets reltuples in place, so a rolled-back one leaves reltuples but no stats)."""
    query = text(
        "SELECT c.reltuples > 0 AND EXISTS (SELECT 1 FROM pg_stats s WHERE s.schemaname = n.nspname"
        " AND s.tablename = c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(:t)"
    )
    return bool(session.scalar(query, {"t": table}))


def _lz4(session: Session) -> str | None:
    """Compress this transaction's TOASTed text with lz4, as the generations' code columns are: rows hold a few KB
    of code, and pglz costs several times the CPU. Returns the setting to restore; None where lz4 is missing."""
    current, available = session.execute(
        text(
            "SELECT current_setting('default_toast_compression'), 'lz4' = ANY(enumvals) FROM pg_settings"
            " WHERE name = 'default_toast_compression'"
        )
    ).one()
    if not available:
        return None
    session.execute(text("SELECT set_config('default_toast_compression', 'lz4', true)"))
    return str(current)


def _utc(session: Session) -> str | None:
    """Set this transaction's TimeZone to UTC, so that psycopg reads timestamps as UTCDateTime would make them
    (see `_Build._gens`). Returns the setting to restore; None where it was UTC already."""
    current = session.scalar(text("SELECT current_setting('TimeZone')"))
    if current == "UTC":
        return None
    session.execute(text("SELECT set_config('TimeZone', 'UTC', true)"))
    return str(current)


def _one_of(session: Session, column: Any, values: Iterable[Any], numeric: bool = False) -> Any:
    """`column` is one of the values, sent as one JSON parameter: the SQL text stays the same whatever their
    count, and no array of text is escaped in Python. On Postgres `= ANY(ARRAY(...))` lets the planner probe an
    index once per value; an `IN (SELECT ...)` join was planned as a scan of the project's rows per value."""
    doc = literal(orjson.dumps(list(values)).decode(), String())
    if session.get_bind().dialect.name == "postgresql":
        value = func.json_array_elements_text(cast(doc, PG_JSON())).table_valued("value").c.value
        return column == any_(func.array(select(cast(value, BigInteger()) if numeric else value).scalar_subquery()))
    return column.in_(select(func.json_each(doc).table_valued("value").c.value))


@dataclass(slots=True)
class _Old:
    """What the table holds for a key."""

    content_hash: str
    active: bool
    prompt_hash: str
    members: tuple[str, ...] = ()  # choice pairs: the two generation ids


@dataclass(slots=True)
class _Plan:
    """What one generation may yield, once its generation gates passed."""

    g: _Gen
    order: tuple[datetime, str]
    label: bool | None  # the completion's kto label, from the strongest signal
    signal: tuple[str, datetime] | None  # the event behind that label
    edit: str | None  # "pair" | "rewrite" | "trivial" for edits
    prompt_gate: str | None
    completion_gate: str | None
    final_gate: str | None
    broken: bool = False


@dataclass
class _Page:
    gens: dict[int, _Gen]  # the changed generations and the rest of their prompt groups
    produced: dict[Key, dict[str, Any]] = field(default_factory=dict)


class _Ahead(NamedTuple):
    """A page read ahead, with the members of the prompt groups that its changed generations seemed to need then."""

    rows: list[_Gen]
    hashes: set[str]  # the groups whose members were read
    members: list[_Gen]  # their members outside the page


class _Skipped(Exception):
    """A database job not run because one before it failed."""


class _Queue:
    """The build's database work, run in order on one other thread while this one derives: on Postgres the server
    sends the next page and stores the last page's rows meanwhile, and psycopg waits for it without holding the
    GIL. The derivation touches the session only after `drain`, so no two threads ever use it at once. The first
    error of a job is raised by `result` or `drain`, in order, and the jobs after it are skipped. Unless `threaded`
    (SQLite runs in this process; the last page has nothing to overlap) a job runs when it is submitted, after the
    ones before it; the thread starts with the first job it runs, so a build of one page never starts it."""

    def __init__(self, threaded: bool) -> None:
        self.threaded = threaded
        self.pool: ThreadPoolExecutor | None = None
        self.pending: deque[Future[Any]] = deque()
        self.failed = False
        self.waited = 0.0  # seconds the derivation waited for the jobs

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any]
        if not self.threaded:
            self.drain()
            future = Future()
            future.set_result(fn(*args))
            return future
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="build-rows")
        future = self.pool.submit(self._run, fn, args)
        self.pending.append(future)
        return future

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self.failed:
            raise _Skipped
        try:
            return fn(*args)
        except BaseException:
            self.failed = True
            raise

    def result(self, future: Future[Any]) -> Any:
        clock = time.perf_counter()
        try:
            while future in self.pending:
                self.pending.popleft().result()
            return future.result()
        finally:
            self.waited += time.perf_counter() - clock

    def drain(self) -> None:
        clock = time.perf_counter()
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.waited += time.perf_counter() - clock

    def close(self) -> None:
        """Wait for the job that runs (the caller's rollback must not meet it), and run no other."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Build:
    """One build: its counters, and the state that spans pages."""

    def __init__(self, session: Session, project_id: int, config: DatasetConfig, built_at: datetime, pg: bool):
        self.session, self.project_id, self.config, self.built_at, self.pg = session, project_id, config, built_at, pg
        self.derivation = {"version": DERIVATION_VERSION, **config.model_dump(mode="json", include=_GATE_FIELDS)}
        self.cutoff = config.near_duplicate_similarity * 100
        self.opted_out = consent.opted_out_users(session, project_id)  # the consent rule (feedback/consent.py)
        self.gates: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.added: Counter[str] = Counter()
        self.changed: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.db_seconds: defaultdict[str, float] = defaultdict(float)
        self.queue = _Queue(False)
        self.read = self.derived = self.written = 0
        self.watermark: datetime | None = None
        # Group members loaded besides their page, at the state they were derived in: a later page that holds one
        # unchanged needs no second derivation of its group. Page rows need no entry: keyset paging reads a row
        # again only with a new updated_at.
        self.seen: dict[int, datetime] = {}
        # generation id -> keys of its active choice pairs (see _choice_index), and what those keys hold.
        self.by_member: dict[str, set[str]] | None = None
        self.choices: dict[str, _Old] = {}
        # Without statistics (a table analyzed while empty, or never), Postgres plans a lookup of thousands of keys
        # as a scan of the project's rows per key: minutes instead of milliseconds. ANALYZE counts this
        # transaction's own rows, so one run once some rows are written fixes the plans for the rest of the build.
        self.analyze_rows = pg and not _has_statistics(session, "training_rows")
        # A project's first build (no rows yet, and no one else writes them: the build lock) looks up only the
        # generations that its own earlier pages wrote rows for; the others have none to find.
        has_rows = session.scalar(select(_ROWS.c.id).where(_ROWS.c.project_id == project_id).limit(1))
        self.written_for: set[str] | None = None if has_rows is not None else set()

    def report(self) -> dict[str, Any]:
        return {
            "gates": {g: self.gates[g] for g in GATES},
            "rows": {k: self.rows[k] for k in KINDS},  # derived, after the gates (unchanged ones included)
            "added": {k: self.added[k] for k in KINDS},
            "changed": {k: self.changed[k] for k in KINDS},
            "removed": {k: self.removed[k] for k in KINDS},
            "generations_derived": self.derived,
            "derivation": self.derivation,
            "overlap_s": OVERLAP.total_seconds(),
            "seconds": {k: round(v, 3) for k, v in sorted(self._seconds().items())},
        }

    def _seconds(self) -> dict[str, float]:
        """Each phase's seconds on either thread (the database jobs overlap the derivation), and how long the
        derivation waited for the database ("wait")."""
        seconds = dict(self.seconds)
        for phase, value in self.db_seconds.items():
            seconds[phase] = seconds.get(phase, 0.0) + value
        seconds["wait"] = self.queue.waited
        return seconds

    def run(self, since: datetime | None, batch_size: int) -> None:
        """Page by page: read the changed generations and their groups, derive their rows, write the difference.
        While a page derives, the database job thread (`_Queue`) reads the next page and stores the rows of the
        page before: for 100,000 generations on two cores busy with other work, a median 22.8 s against 24.9 s over
        seven back-to-back pairs, for the same CPU (see benchmarks/README.md). It cost 1.5-3 CPU seconds more and
        gained nothing while the build still ran full garbage collections (`_gc_paused`), whose passes stop
        both threads, and read through SQLAlchemy's result rows (`_gens`), Python work on the job thread."""
        self.queue = _Queue(False)
        try:
            read = self._read_ahead(since, None, batch_size)
            while read.rows:
                rows = read.rows
                clock = time.perf_counter()
                page = self._assemble(read)
                self.seconds["read"] += time.perf_counter() - clock
                more = len(rows) == batch_size
                self.queue.threaded = self.pg and more
                if more:  # after _assemble: it marks what this page loaded as seen
                    cursor = (rows[-1].updated_at, rows[-1].id)
                    ahead = self.queue.submit(self._read_ahead, since, cursor, batch_size)
                if page is not None:
                    self._derive(page)
                    self._write(page)
                if not more:
                    break
                read = self.queue.result(ahead)
            self.queue.drain()
        finally:
            self.queue.close()

    def _db_timed(self, phase: str, fn: Callable[..., Any], *args: Any) -> Any:
        clock = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.db_seconds[phase] += time.perf_counter() - clock

    # -- reading -----------------------------------------------------------------------------------------------

    def _changed_page(self, since: datetime | None, cursor: tuple[datetime, int] | None, limit: int) -> list[_Gen]:
        query = _select().where(_GEN.c.project_id == self.project_id)
        if since is not None:
            query = query.where(_GEN.c.updated_at >= since)
        if cursor is not None:
            at, pk = cursor
            query = query.where(
                _GEN.c.updated_at >= at, or_(_GEN.c.updated_at > at, and_(_GEN.c.updated_at == at, _GEN.c.id > pk))
            )
        rows = self._gens(query.order_by(_GEN.c.updated_at, _GEN.c.id).limit(limit))
        self.read += len(rows)
        if rows:
            self.watermark = max(self.watermark or rows[-1].updated_at, rows[-1].updated_at)
        return rows

    def _read_ahead(self, since: datetime | None, cursor: tuple[datetime, int] | None, limit: int) -> _Ahead:
        """A database job: the next page, and the members of the prompt groups of its generations not seen yet
        (`_assemble` checks them against what is seen when the page's turn comes)."""
        clock = time.perf_counter()
        rows = self._changed_page(since, cursor, limit)
        hashes = {g.prompt_hash for g in rows if g.prompt_hash and self.seen.get(g.id) != g.updated_at}
        members = self._members(hashes, {g.id for g in rows})
        self.db_seconds["read"] += time.perf_counter() - clock
        return _Ahead(rows, hashes, members)

    def _assemble(self, read: _Ahead) -> _Page | None:
        """The page of a read ahead: its generations not seen yet, with the rest of their prompt groups. What the
        read ahead took for the groups is checked against what is seen now (the page before may have loaded more
        since); a group it did not read is loaded now."""
        gens = {g.id: g for g in read.rows if self.seen.get(g.id) != g.updated_at}
        if not gens:
            return None
        hashes = {g.prompt_hash for g in gens.values() if g.prompt_hash}
        if not hashes <= read.hashes:
            self.queue.drain()
            self._add_groups(gens, hashes)
            return _Page(gens)
        for g in chain(read.rows, read.members):
            if g.prompt_hash in hashes and g.id not in gens:
                gens[g.id] = g
                self.seen[g.id] = g.updated_at
        return _Page(gens)

    def _members(self, hashes: set[str], page: set[int]) -> list[_Gen]:
        """The generations of these prompt groups outside the page: ids first, so no text is read twice."""
        if not hashes:
            return []
        ids = self.session.scalars(
            select(_GEN.c.id).where(
                _GEN.c.project_id == self.project_id, _one_of(self.session, _GEN.c.prompt_hash, sorted(hashes))
            )
        ).all()
        missing = sorted(set(ids) - page)
        if not missing:
            return []
        return self._gens(_select().where(_one_of(self.session, _GEN.c.id, missing, True)))

    def _gens(self, query: Select[Any]) -> list[_Gen]:
        """The generations a query reads. On Postgres straight from psycopg: SQLAlchemy's result rows and the UTC
        conversion of five datetimes per row cost more than psycopg's decoding of the texts. The transaction's
        TimeZone is UTC (`_utc`), so psycopg's datetimes are already in UTC, as UTCDateTime would return them."""
        if not self.pg:
            return list(map(_gen, self.session.execute(query).all()))
        compiled = query.compile(dialect=self.session.get_bind().dialect)
        return list(map(_gen, pg_fetch(self.session, compiled.string, compiled.params)))

    def _add_groups(self, gens: dict[int, _Gen], hashes: set[str]) -> list[_Gen]:
        """Load the members of these prompt groups that are not loaded yet: ids first, so no text is read twice."""
        added = self._members(hashes, set(gens))
        for g in added:
            gens[g.id] = g
            self.seen[g.id] = g.updated_at
        return added

    def _existing(self, gids: list[str]) -> dict[Key, _Old]:
        """What earlier derivations of these generations wrote: through the unique index for the kinds of one
        generation, from the index of active choice pairs for the pairs."""
        found: dict[Key, _Old] = {}
        lookup = gids
        if self.written_for is not None:
            lookup = [g for g in gids if g in self.written_for]
            self.written_for.update(gids)  # whatever this page writes for them, a later page finds
        keys = {
            "edit_pair": [f"edit:{g}" for g in lookup],
            "sft": [f"sft:{g}" for g in lookup],
            "kto": [f"kto:completion:{g}" for g in lookup] + [f"kto:final:{g}" for g in lookup],
        }
        for kind, wanted in keys.items():
            if not wanted:
                continue
            query = select(_ROWS.c.source_key, _ROWS.c.content_hash, _ROWS.c.active, _ROWS.c.prompt_hash).where(
                _ROWS.c.project_id == self.project_id,
                _ROWS.c.kind == kind,
                _one_of(self.session, _ROWS.c.source_key, wanted),
            )
            for key, content_hash, active, prompt_hash in self.session.execute(query).all():
                found[(kind, key)] = _Old(content_hash, bool(active), prompt_hash)
        by_member = self._choice_index()
        for gid in gids:
            for key in by_member.get(gid, ()):
                found[("choice_pair", key)] = self.choices[key]
        return found

    def _choice_index(self) -> dict[str, set[str]]:
        """Generation id -> keys of its active choice pairs: loaded once per build, then kept by `_settle`. No index
        finds a pair by its members, so one scan of the project's pairs beats one per page."""
        if self.by_member is None:
            self.by_member = defaultdict(set)
            query = select(_ROWS.c.source_key, _ROWS.c.content_hash, _ROWS.c.prompt_hash, _ROWS.c.generation_ids)
            query = query.where(
                _ROWS.c.project_id == self.project_id, _ROWS.c.kind == "choice_pair", _ROWS.c.active.is_(True)
            )
            for key, content_hash, prompt_hash, gids in self.session.execute(query).all():
                self.choices[key] = _Old(content_hash, True, prompt_hash, tuple(gids))
                for gid in gids:
                    self.by_member[gid].add(key)
        return self.by_member

    # -- deriving ----------------------------------------------------------------------------------------------

    def _derive(self, page: _Page, gens: Iterable[_Gen] | None = None) -> None:
        """Add the rows of these generations (all of the page's by default; whole groups) to `page.produced`."""
        clock = time.perf_counter()
        gens = list(page.gens.values() if gens is None else gens)
        self.derived += len(gens)
        plans = [p for g in gens if (p := self._plan(g)) is not None]
        syntax = time.perf_counter()
        self._check_syntax([p for p in plans if p.edit in ("pair", "rewrite") and p.final_gate is None])
        syntax = time.perf_counter() - syntax
        groups: dict[str, list[_Plan]] = defaultdict(list)
        for p in plans:
            groups[p.g.prompt_hash].append(p)
        for group in groups.values():
            group.sort(key=lambda p: p.order)
            for row in self._group_rows(group):
                page.produced[(row["kind"], row["source_key"])] = row
        self.seconds["syntax"] += syntax
        self.seconds["derive"] += time.perf_counter() - clock - syntax

    def _text_gate(self, value: str) -> str | None:
        size = len(value)
        if size > self.config.max_chars:
            return "too_long"
        if size < self.config.min_chars:
            return "empty"
        if self.config.min_chars == 1:  # the default: blank, without the copy that strip makes
            return "empty" if value.isspace() else None
        return "empty" if len(value.strip()) < self.config.min_chars else None

    def _plan(self, g: _Gen) -> _Plan | None:
        """The generation gates, cheapest first, and what the generation may yield."""
        score = g.rating_score
        if g.outcome not in _FEEDBACK and not score:
            return None  # shown, or rated 0: no verdict, nothing to learn and nothing to count
        config, gates = self.config, self.gates
        if g.excluded or consent.withholds(self.opted_out, g.user, g.shown_at):
            gates["excluded"] += 1
            return None
        completion, final = g.completion, g.final_text
        if g.prompt_hash is None or completion is None or g.shown_event_id is None:
            gates["no_prompt"] += 1
            return None
        if (
            final is not None
            and ("<secret:" in final or "<secret:" in completion)
            and Counter(_SECRET.findall(final)) != Counter(_SECRET.findall(completion))
        ):
            gates["secret_in_change"] += 1
            return None
        edit = None
        if g.outcome == "edited" and final is not None:
            distance = g.edit_distance
            if distance is None:
                distance = Levenshtein.normalized_distance(completion, final)
            if distance < config.min_edit_distance or _whitespace_only(completion, final):
                edit = "trivial"
                gates["trivial_edit"] += 1
            elif distance > config.max_edit_distance:
                edit = "rewrite"
                gates["total_rewrite"] += 1
            else:
                edit = "pair"
        label: bool | None
        if score:
            label, signal = score > 0, (g.rating_event_id, g.rated_at)
        elif edit is not None:
            label, signal = edit == "trivial", (g.edited_event_id, g.edited_at)
        elif g.outcome in ("accepted", "rejected"):
            label, signal = g.outcome == "accepted", (g.decision_event_id, g.decided_at)
        else:
            label, signal = None, None
        if g.prompt is not None:
            prompt_chars = len(g.prompt)
        else:
            prompt_chars = sum(len(str(m.get("content") or "")) for m in g.messages or ())
        return _Plan(
            g=g,
            order=(g.shown_at, g.generation_id),
            label=label,
            signal=signal,
            edit=edit,
            prompt_gate="too_long" if prompt_chars > config.max_chars else None,
            completion_gate=self._text_gate(completion),
            final_gate=self._text_gate(final) if edit in ("pair", "rewrite") else None,
        )

    def _check_syntax(self, plans: list[_Plan]) -> None:
        """Flag Python edits whose final text broke syntax that the completion had right. The prefix and suffix are
        read only for the few final texts that do not parse on their own."""
        if not self.config.check_python_syntax:
            return
        undecided: list[tuple[_Plan, bool]] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings of user code (invalid escapes, ...) are not ours
            for p in plans:
                if _is_python(p.g) and not parses(p.g.final_text):
                    undecided.append((p, parses(p.g.completion)))
            if not undecided:
                return
            self.queue.drain()
            query = texts.select_with_code(_GEN.c.id, _GEN.c.excluded, _GEN.c.outcome).where(
                _one_of(self.session, _GEN.c.id, [p.g.id for p, _ in undecided], numeric=True)
            )
            context = {}
            for pk, excluded, outcome, *payloads in self.session.execute(query).all():
                code = _code(excluded, outcome, payloads)
                context[pk] = (code["prefix"], code["suffix"])
            for p, completion_parses in undecided:
                prefix, suffix = context.get(p.g.id, (None, None))
                if parses_within(p.g.final_text, prefix, suffix):
                    continue
                if completion_parses or parses_within(p.g.completion, prefix, suffix):
                    p.broken = True
                    self.gates["broken_syntax"] += 1

    def _group_rows(self, group: list[_Plan]) -> list[dict[str, Any]]:
        """The rows of one prompt group, earliest generation first."""
        gates, cutoff = self.gates, self.cutoff
        kept: dict[tuple[str, bool | None], list[str]] = defaultdict(list)
        kept_chosen: list[str] = []
        kept_rejected: list[str] = []

        def fresh(bucket: tuple[str, bool | None], value: str) -> bool:
            texts = kept[bucket]
            if texts and process.extractOne(value, texts, scorer=fuzz.ratio, score_cutoff=cutoff) is not None:
                gates["near_duplicate"] += 1
                return False
            texts.append(value)
            return True

        def fresh_pair(chosen: str, rejected: str) -> bool:
            if kept_chosen:
                for _, _, i in process.extract_iter(chosen, kept_chosen, scorer=fuzz.ratio, score_cutoff=cutoff):
                    if fuzz.ratio(rejected, kept_rejected[i], score_cutoff=cutoff):
                        gates["near_duplicate"] += 1
                        return False
            kept_chosen.append(chosen)
            kept_rejected.append(rejected)
            return True

        rows: list[dict[str, Any]] = []
        accepted: list[_Plan] = []
        rejected: list[_Plan] = []
        for p in group:
            g = p.g
            gid, completion, final = g.generation_id, g.completion, g.final_text
            if p.edit in ("pair", "rewrite") and not p.broken:
                edited = _events((g.shown_event_id, g.shown_at), (g.edited_event_id, g.edited_at))
                if p.edit == "pair":
                    gate = p.prompt_gate or p.final_gate or p.completion_gate
                    if gate:
                        gates[gate] += 1
                    elif fresh_pair(final, completion):
                        rows.append(self._row("edit_pair", f"edit:{gid}", p, edited, chosen=final, rejected=completion))
                gate = p.prompt_gate or p.final_gate
                if gate:
                    gates[gate] += 2  # the final kto row and the sft row
                else:
                    if fresh(("kto", True), final):
                        rows.append(self._row("kto", f"kto:final:{gid}", p, edited, completion=final, label=True))
                    if fresh(("sft", None), final):
                        rows.append(self._row("sft", f"sft:{gid}", p, edited, completion=final))
            if p.label is None or p.signal is None:
                continue
            gate = p.prompt_gate or p.completion_gate
            if gate:
                gates[gate] += 1
                continue
            if fresh(("kto", p.label), completion):
                events = _events((g.shown_event_id, g.shown_at), p.signal)
                rows.append(self._row("kto", f"kto:completion:{gid}", p, events, completion=completion, label=p.label))
            if g.outcome == "accepted" and p.label:
                accepted.append(p)
            elif g.outcome == "rejected" and not p.label:
                rejected.append(p)
        if accepted and rejected:
            rows += self._choice_pairs(accepted, rejected)
        return rows

    def _choice_pairs(self, accepted: list[_Plan], rejected: list[_Plan]) -> list[dict[str, Any]]:
        """Each accepted generation over the earliest PAIRS_PER_ACCEPTED rejected ones that differ from it more than
        trivially. A completion that near-duplicates an earlier one of its outcome makes near-duplicate pairs."""
        gates, min_distance = self.gates, self.config.min_edit_distance
        distinct_accepted = self._distinct([p.g.completion for p in accepted])
        distinct_rejected = self._distinct([p.g.completion for p in rejected])
        rows: list[dict[str, Any]] = []
        for a, a_distinct in zip(accepted, distinct_accepted, strict=True):
            made = 0
            for r, r_distinct in zip(rejected, distinct_rejected, strict=True):
                if made == PAIRS_PER_ACCEPTED:
                    break
                chosen, other = a.g.completion, r.g.completion
                distance = Levenshtein.normalized_distance(chosen, other, score_cutoff=min_distance)
                if distance < min_distance or _whitespace_only(chosen, other):
                    gates["trivial_pair"] += 1
                    continue
                made += 1
                if not (a_distinct and r_distinct):
                    gates["near_duplicate"] += 1
                    continue
                events = _events(*_decision_events(a.g), *_decision_events(r.g))
                key = f"choice:{a.g.generation_id}>{r.g.generation_id}"
                rows.append(self._row("choice_pair", key, a, events, chosen=chosen, rejected=other, also=r.g))
        return rows

    def _distinct(self, texts: list[str]) -> list[bool]:
        """For each text, whether it is no near-duplicate of an earlier distinct one."""
        kept: list[str] = []
        flags = []
        for value in texts:
            dup = bool(kept) and process.extractOne(value, kept, scorer=fuzz.ratio, score_cutoff=self.cutoff)
            if not dup:
                kept.append(value)
            flags.append(not dup)
        return flags

    def _row(
        self,
        kind: str,
        key: str,
        p: _Plan,
        events: tuple[list[str], datetime],
        *,
        chosen: str | None = None,
        rejected: str | None = None,
        completion: str | None = None,
        label: bool | None = None,
        also: _Gen | None = None,
    ) -> dict[str, Any]:
        """A row of the plan's generation (and, for a choice pair, of the `also` generation). Its texts are the
        generations' own string objects: `_settle` hashes each once by identity."""
        g = p.g
        return {
            "project_id": self.project_id,
            "kind": kind,
            "source_key": key,
            "prompt": g.prompt,
            "messages": g.messages,
            "prompt_hash": g.prompt_hash,
            "chosen": chosen,
            "rejected": rejected,
            "completion": completion,
            "label": label,
            "user": g.user,
            "occurred_at": events[1],
            "generation_ids": [g.generation_id] if also is None else [g.generation_id, also.generation_id],
            "event_ids": events[0],
            "content_hash": "",
            "active": True,
            "built_at": self.built_at,
        }

    # -- writing -----------------------------------------------------------------------------------------------

    def _write(self, page: _Page) -> None:
        """Compare the page's rows with what the table holds for its generations, and queue the write of the
        difference (`_store`). The comparison needs the pages before stored: the queue is drained first."""
        self.queue.drain()
        clock = time.perf_counter()
        existing = self._existing([g.generation_id for g in page.gens.values()])
        while True:
            # A group that a generation left is re-derived too: the old rows name it. (Rare; usually no loop.)
            hashes = {g.prompt_hash for g in page.gens.values()}
            added = self._add_groups(page.gens, {old.prompt_hash for old in existing.values()} - hashes)
            if not added:
                break
            self._derive(page, [g for g in page.gens.values() if g.prompt_hash in {a.prompt_hash for a in added}])
            existing.update(self._existing([g.generation_id for g in added]))
        self.seconds["read"] += time.perf_counter() - clock

        clock = time.perf_counter()
        inserts, upserts = self._settle(page.produced, existing)
        gone = sorted(key for key, old in existing.items() if old.active and key not in page.produced)
        for key in gone:
            self.removed[key[0]] += 1
            if key[0] == "choice_pair" and self.by_member is not None:
                for gid in self.choices.pop(key[1]).members:
                    self.by_member[gid].discard(key[1])
        self.seconds["compare"] += time.perf_counter() - clock
        if inserts or upserts or gone:
            self.queue.submit(self._db_timed, "write", self._store, inserts, upserts, gone)

    def _store(self, inserts: list[dict[str, Any]], upserts: list[dict[str, Any]], gone: list[Key]) -> None:
        """A database job: insert the new keys, upsert the changed ones, set the gone ones inactive."""
        if self.pg and inserts:
            cursor = self.session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.adapters.register_dumper(None, _JsonbDumper)
            with cursor.copy(_COPY_SQL) as out:
                out.set_types(_COPY_TYPES)
                values = itemgetter(*_COLUMNS)
                for row in inserts:
                    out.write_row(values(row))
        elif inserts:
            upserts += inserts
        for start in range(0, len(upserts), _WRITE_CHUNK):
            _WRITE_ROWS.write(self.session, upserts[start : start + _WRITE_CHUNK])
        by_kind: dict[str, list[str]] = defaultdict(list)
        for kind, source_key in gone:
            by_kind[kind].append(source_key)
        for kind, keys in by_kind.items():
            self.session.execute(
                update(_ROWS)
                .where(
                    _ROWS.c.project_id == self.project_id,
                    _ROWS.c.kind == kind,
                    _one_of(self.session, _ROWS.c.source_key, keys),
                )
                .values(active=False, built_at=self.built_at)
            )
        self.written += len(inserts) + len(upserts)
        if self.analyze_rows and self.written >= _ANALYZE_AFTER:
            self.session.execute(text("ANALYZE training_rows"))
            self.analyze_rows = False

    def _settle(
        self, produced: dict[Key, dict[str, Any]], existing: dict[Key, _Old]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Hash the produced rows; return those to write: new keys (inserted), and keys that changed or come back
        after being removed (upserted)."""
        digests: dict[int, bytes] = {}  # by object: a generation's texts sit in several of its rows

        def digest(value: str | None) -> bytes:
            if value is None:
                return b"\0" * 32
            found = digests.get(id(value))
            if found is None:
                found = digests[id(value)] = hashlib.sha256(value.encode()).digest()
            return found

        inserts, upserts = [], []
        for key in sorted(produced):
            row, kind = produced[key], key[0]
            self.rows[kind] += 1
            # The prompt hash stands for the prompt; the texts are hashed once per generation.
            meta = orjson.dumps(
                [
                    row["prompt_hash"],
                    row["label"],
                    row["user"],
                    row["occurred_at"],
                    row["generation_ids"],
                    row["event_ids"],
                ]
            )
            texts = digest(row["chosen"]) + digest(row["rejected"]) + digest(row["completion"])
            row["content_hash"] = hashlib.sha256(meta + texts).hexdigest()
            old = existing.get(key)
            if old is None:
                self.added[kind] += 1
                inserts.append(row)
            elif not old.active or old.content_hash != row["content_hash"]:
                (self.changed if old.active else self.added)[kind] += 1
                upserts.append(row)
            else:
                continue
            if kind == "choice_pair" and self.by_member is not None:
                self.choices[key[1]] = _Old(row["content_hash"], True, row["prompt_hash"], tuple(row["generation_ids"]))
                for gid in row["generation_ids"]:
                    self.by_member[gid].add(key[1])
        return inserts, upserts


def _events(*events: tuple[str, datetime]) -> tuple[list[str], datetime]:
    """The ids of the events behind a row, and when the latest of them happened. (Rows of one generation share
    the list: nothing changes it.)"""
    ids, latest = [], events[0][1]
    for event_id, at in events:
        ids.append(event_id)
        if at > latest:
            latest = at
    return ids, latest


def _decision_events(g: _Gen) -> list[tuple[str, datetime]]:
    events = [(g.shown_event_id, g.shown_at), (g.decision_event_id, g.decided_at)]
    if g.rating_score:
        events.append((g.rating_event_id, g.rated_at))
    return events


def _is_python(g: _Gen) -> bool:
    return (g.language or "").lower() == "python" or (g.file_path or "").lower().endswith(_PYTHON_SUFFIXES)


def _whitespace_only(a: str, b: str) -> bool:
    """Whether the texts differ only in whitespace. Counting first (spaces, tabs and line breaks; other whitespace
    makes texts count as different): most edits change how much is not space, and counting copies nothing."""
    if _not_space(a) != _not_space(b):
        return False
    return a.split() == b.split()


def _not_space(text: str) -> int:
    return len(text) - text.count(" ") - text.count("\n") - text.count("\t") - text.count("\r")
