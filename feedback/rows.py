"""Builds a project's training rows from its feedback: reads the generations, derives their rows by the rules of
feedback/derivation.py, and writes what differs from the stored rows.

`build_rows` is incremental. It reads the generations changed since the project's last finished build (from
OVERLAP before its watermark: an ingest transaction that stamped its rows earlier may commit after that build
read), re-derives the whole prompt group of each (choice pairs and near-duplicates depend on the other generations
of a prompt), and writes rows keyed by (kind, source_key) with a content hash: a row that comes out the same is not
written, and a row that a re-derived generation no longer yields is set inactive. Rebuilding is idempotent, so
re-reading the overlap costs time, never correctness. When the derivation changes (the project's gate settings,
or DERIVATION_VERSION), the next build re-derives everything. It works a page of generations at a time, with a few
queries and one write per page; the report counts the gates over the generations derived (a generation
re-derived within a build, because its group changed again, counts again).

The unit of work is a page: whole prompt groups, derived (`_Build._derive`), then compared with what their
generations hold and written (`_Build._write`). Every read and write names its rows through `_Build.scope`, so a
build of one partition of a project (a subset of its prompt groups) would add a predicate on `prompt_hash` there and
keep its own lock key and watermark. The one step that crosses groups: a generation that moved to another prompt
leaves rows in its old group, which `_write` re-derives; across partitions that group belongs to the other one.
"""

import gc
import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

import orjson
from psycopg.adapt import Dumper
from psycopg.postgres import types as pg_types
from psycopg.pq import Format
from pydantic import ValidationError
from sqlalchemy import BigInteger, Select, String, and_, any_, cast, func, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSON as PG_JSON
from sqlalchemy.orm import Session
from sqlalchemy.sql.schema import Table

from core.db import utcnow
from core.errors import InvalidInput, NotFound
from core.projects import Project
from feedback import consent, derivation, texts
from feedback.bulk import BulkWriter, pg_fetch
from feedback.config import DatasetConfig
from feedback.derivation import CODE_FIELDS, GATES, KINDS, Gen
from feedback.fold import settle
from feedback.models import DatasetBuild, Generation, TrainingRow

OVERLAP = timedelta(seconds=5)

_GEN: Table = Generation.__table__  # type: ignore[assignment]
_ROWS: Table = TrainingRow.__table__  # type: ignore[assignment]
_STORED = Gen._fields[: -len(CODE_FIELDS)]  # read from `generations`; the code comes from the payloads
assert Gen._fields[-len(CODE_FIELDS) :] == CODE_FIELDS
_READ = [_GEN.c[name] for name in _STORED]
_OUTCOME, _EXCLUDED = _STORED.index("outcome"), _STORED.index("excluded")

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
    restore: dict[str, str] = {}
    if pg:
        # The same key as feedback.tasks' try-lock (advisory locks nest within a session): concurrent builds of
        # a project would re-derive the same groups and both report the same rows as added.
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('build:' || CAST(:p AS text), 0))"),
            {"p": project_id},
        )
        if not _has_statistics(session, "generations"):
            session.execute(text("ANALYZE generations"))
        if _lz4_available(session):
            # Rows hold a few KB of code, TOASTed; pglz costs several times lz4's CPU.
            restore["default_toast_compression"] = _set_local(session, "default_toast_compression", "lz4")
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
        # psycopg then returns timestamps in UTC, as UTCDateTime would make them (`_Build._gens` reads past it).
        restore["TimeZone"] = _set_local(session, "TimeZone", "UTC")
        # Planning the page reads (three payload lookups per generation) passes `jit_above_cost`, and compiling
        # took about as long as running them.
        restore["jit"] = _set_local(session, "jit", "off")
    with _gc_paused():
        build.run(since, batch_size)
    for name, value in restore.items():
        session.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})

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
    ever. A build keeps many small containers alive a page at a time, and full passes over them cost about a tenth
    of its CPU to free little; young collections still free a page's short-lived cycles."""
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


# -- the Postgres session ----------------------------------------------------------------------------------------


def _has_statistics(session: Session, table: str) -> bool:
    """Whether the planner knows the table: it holds rows (never analyzed is -1, analyzed while empty is 0) and
    has column statistics (ANALYZE sets reltuples in place, so a rolled-back one leaves reltuples but no stats)."""
    query = text(
        "SELECT c.reltuples > 0 AND EXISTS (SELECT 1 FROM pg_stats s WHERE s.schemaname = n.nspname"
        " AND s.tablename = c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = to_regclass(:t)"
    )
    return bool(session.scalar(query, {"t": table}))


def _lz4_available(session: Session) -> bool:
    query = text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
    return bool(session.scalar(query))


def _set_local(session: Session, name: str, value: str) -> str:
    """Set a setting for the rest of the transaction; returns the value it had, for the caller to put back."""
    previous = str(session.scalar(text("SELECT current_setting(:n)"), {"n": name}))
    session.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
    return previous


def _one_of(session: Session, column: Any, values: Iterable[Any], numeric: bool = False) -> Any:
    """`column` is one of the values, sent as one JSON parameter: the SQL text stays the same whatever their
    count, and no array of text is escaped in Python. On Postgres `= ANY(ARRAY(...))` lets the planner probe an
    index once per value; an `IN (SELECT ...)` join was planned as a scan of the project's rows per value."""
    doc = literal(orjson.dumps(list(values)).decode(), String())
    if session.get_bind().dialect.name == "postgresql":
        value = func.json_array_elements_text(cast(doc, PG_JSON())).table_valued("value").c.value
        return column == any_(func.array(select(cast(value, BigInteger()) if numeric else value).scalar_subquery()))
    return column.in_(select(func.json_each(doc).table_valued("value").c.value))


# -- writing by binary COPY --------------------------------------------------------------------------------------

_COLUMNS = [c.name for c in _ROWS.columns if c.name != "id"]


def _pg_oid(column: Any) -> int:
    """The oid of a column's Postgres type, for binary COPY."""
    info = pg_types.get(column.type.compile(dialect=postgresql.dialect()).lower().split("(")[0])
    assert info is not None, f"{column.name}: no psycopg type"
    return info.oid


class _JsonbDumper(Dumper):
    """jsonb in binary COPY by orjson: a version byte, then the text (psycopg's own goes through `json`)."""

    format = Format.BINARY
    oid = _pg_oid(_ROWS.c.event_ids)

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + orjson.dumps(obj)


_WRITE_ROWS = BulkWriter(
    _ROWS,
    _COLUMNS,
    conflict=["project_id", "kind", "source_key"],
    update=[c for c in _COLUMNS if c not in ("project_id", "kind", "source_key")],
)
_COPY_TYPES = [_pg_oid(_ROWS.c[c]) for c in _COLUMNS]
# New keys go in by binary COPY: half the server time of the upsert, which parses a JSON document and looks for a
# conflict per row, and less than COPY's csv, which scans every text for quotes. No one else writes this project's
# rows meanwhile (the build lock).
_QUOTED = ", ".join(f'"{c}"' for c in _COLUMNS)
_COPY_SQL = f"COPY training_rows ({_QUOTED}) FROM STDIN WITH (FORMAT binary)"
_WRITE_CHUNK = 5000
_ANALYZE_AFTER = 1000  # rows written, see _Build.analyze_rows


def _copy_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.adapters.register_dumper(None, _JsonbDumper)
    with cursor.copy(_COPY_SQL) as out:
        out.set_types(_COPY_TYPES)
        values = itemgetter(*_COLUMNS)
        for row in rows:
            out.write_row(values(row))


# -- reading generations -----------------------------------------------------------------------------------------


def _gen(raw: Any) -> Gen:
    """A `Gen` from a row of `_select` (the stored columns, then the three payload texts)."""
    stored, payloads = raw[: len(_STORED)], raw[len(_STORED) :]
    code = _code(stored[_EXCLUDED], stored[_OUTCOME], payloads)
    return Gen._make((*stored, *(code[name] for name in CODE_FIELDS)))


def _code(excluded: bool, outcome: str, payloads: Any) -> dict[str, Any]:
    """A stored row's code from its three payload texts. A row is "edited" exactly when it has a winning edit, and
    otherwise its outcome is its decision, so the outcome stands for both."""
    return texts.code(excluded, outcome, outcome == "edited", *payloads)


def _select() -> Select[Any]:
    return texts.select_with_code(*_READ)


@dataclass(slots=True)
class _Old:
    """What the table holds for a key."""

    content_hash: str
    active: bool
    prompt_hash: str
    members: tuple[str, ...] = ()  # choice pairs: the two generation ids


@dataclass
class _Page:
    gens: dict[int, Gen]  # the changed generations and the rest of their prompt groups
    produced: dict[Key, dict[str, Any]] = field(default_factory=dict)


class _Build:
    """One build: its counters, and the state that spans pages."""

    def __init__(self, session: Session, project_id: int, config: DatasetConfig, built_at: datetime, pg: bool):
        self.session, self.project_id, self.config, self.built_at, self.pg = session, project_id, config, built_at, pg
        self.derivation = derivation.version(config)
        self.opted_out = consent.opted_out_users(session, project_id)  # the consent rule (feedback/consent.py)
        self.gates: Counter[str] = Counter()
        self.dropped_edit_pairs: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.added: Counter[str] = Counter()
        self.changed: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
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
        # A first build (no rows yet, and no one else writes them: the build lock) looks up only the generations
        # that its own earlier pages wrote rows for; the others have none to find.
        has_rows = session.scalar(select(_ROWS.c.id).where(self.scope(_ROWS)).limit(1))
        self.written_for: set[str] | None = None if has_rows is not None else set()

    def scope(self, table: Table) -> Any:
        """The generations, or the rows, that this build may read and write."""
        return table.c.project_id == self.project_id

    def report(self) -> dict[str, Any]:
        return {
            "gates": {g: self.gates[g] for g in GATES},
            # per gate, the edited generations it cost an edit pair (what the gates took from the preference data)
            "edit_pairs_dropped": {g: n for g in GATES if (n := self.dropped_edit_pairs[g])},
            "rows": {k: self.rows[k] for k in KINDS},  # derived, after the gates (unchanged ones included)
            "added": {k: self.added[k] for k in KINDS},
            "changed": {k: self.changed[k] for k in KINDS},
            "removed": {k: self.removed[k] for k in KINDS},
            "generations_derived": self.derived,
            "derivation": self.derivation,
            "overlap_s": OVERLAP.total_seconds(),
            "seconds": {k: round(v, 3) for k, v in sorted(self.seconds.items())},
        }

    def run(self, since: datetime | None, batch_size: int) -> None:
        """Page by page: read the changed generations and their groups, derive their rows, write the difference."""
        cursor = None
        while True:
            clock = time.perf_counter()
            changed = self._changed_page(since, cursor, batch_size)
            page = self._page(changed)
            self.seconds["read"] += time.perf_counter() - clock
            if page is not None:
                self._derive(page)
                self._write(page)
            if len(changed) < batch_size:
                return
            cursor = (changed[-1].updated_at, changed[-1].id)

    # -- reading -----------------------------------------------------------------------------------------------

    def _changed_page(self, since: datetime | None, cursor: tuple[datetime, int] | None, limit: int) -> list[Gen]:
        query = _select().where(self.scope(_GEN))
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

    def _page(self, changed: list[Gen]) -> _Page | None:
        """The changed generations not derived yet in their current state, with the rest of their prompt groups."""
        gens = {g.id: g for g in changed if self.seen.get(g.id) != g.updated_at}
        if not gens:
            return None
        self._add_groups(gens, {g.prompt_hash for g in gens.values() if g.prompt_hash})
        return _Page(gens)

    def _add_groups(self, gens: dict[int, Gen], hashes: set[str]) -> list[Gen]:
        """Load the members of these prompt groups that are not loaded yet: ids first, so no text is read twice."""
        if not hashes:
            return []
        ids = self.session.scalars(
            select(_GEN.c.id).where(self.scope(_GEN), _one_of(self.session, _GEN.c.prompt_hash, sorted(hashes)))
        ).all()
        missing = sorted(set(ids) - set(gens))
        if not missing:
            return []
        added = self._gens(_select().where(_one_of(self.session, _GEN.c.id, missing, True)))
        for g in added:
            gens[g.id] = g
            self.seen[g.id] = g.updated_at
        return added

    def _gens(self, query: Select[Any]) -> list[Gen]:
        """The generations a query reads. On Postgres straight from psycopg: SQLAlchemy's result rows and the UTC
        conversion of five datetimes per row cost more than psycopg's decoding of the texts. The transaction's
        TimeZone is UTC (`build_rows`), so psycopg's datetimes are already in UTC, as UTCDateTime would make them."""
        if not self.pg:
            return list(map(_gen, self.session.execute(query).all()))
        compiled = query.compile(dialect=self.session.get_bind().dialect)
        return list(map(_gen, pg_fetch(self.session, compiled.string, compiled.params)))

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
            "sft": [f"sft{kind}:{g}" for kind in ("", ":accepted", ":kept") for g in lookup],
            "kto": [f"kto:completion:{g}" for g in lookup] + [f"kto:final:{g}" for g in lookup],
        }
        for kind, wanted in keys.items():
            if not wanted:
                continue
            query = select(_ROWS.c.source_key, _ROWS.c.content_hash, _ROWS.c.active, _ROWS.c.prompt_hash).where(
                self.scope(_ROWS), _ROWS.c.kind == kind, _one_of(self.session, _ROWS.c.source_key, wanted)
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
            query = query.where(self.scope(_ROWS), _ROWS.c.kind == "choice_pair", _ROWS.c.active.is_(True))
            for key, content_hash, prompt_hash, gids in self.session.execute(query).all():
                self.choices[key] = _Old(content_hash, True, prompt_hash, tuple(gids))
                for gid in gids:
                    self.by_member[gid].add(key)
        return self.by_member

    # -- deriving and writing ----------------------------------------------------------------------------------

    def _derive(self, page: _Page, gens: Iterable[Gen] | None = None) -> None:
        """Add the rows of these generations (all of the page's by default; whole groups) to `page.produced`."""
        clock = time.perf_counter()
        gens = list(page.gens.values() if gens is None else gens)
        self.derived += len(gens)
        if self.opted_out:  # an opted-out user's generations count as excluded: the rules stay pure
            gens = [
                g._replace(excluded=True) if consent.withholds(self.opted_out, g.user, g.shown_at) else g for g in gens
            ]
        derived = derivation.derive(gens, self.config)
        self.gates.update(derived.gates)
        self.dropped_edit_pairs.update(derived.dropped_edit_pairs)
        for row in derived.rows:
            page.produced[(row["kind"], row["source_key"])] = row
        self.seconds["syntax"] += derived.syntax_s
        self.seconds["derive"] += time.perf_counter() - clock - derived.syntax_s

    def _write(self, page: _Page) -> None:
        """Compare the page's rows with what the table holds for its generations, and write the difference."""
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
            clock = time.perf_counter()
            self._store(inserts, upserts, gone)
            self.seconds["write"] += time.perf_counter() - clock

    def _store(self, inserts: list[dict[str, Any]], upserts: list[dict[str, Any]], gone: list[Key]) -> None:
        """Insert the new keys, upsert the changed ones, set the gone ones inactive."""
        if self.pg and inserts:
            _copy_rows(self.session, inserts)
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
                .where(self.scope(_ROWS), _ROWS.c.kind == kind, _one_of(self.session, _ROWS.c.source_key, keys))
                .values(active=False, built_at=self.built_at)
            )
        self.written += len(inserts) + len(upserts)
        if self.analyze_rows and self.written >= _ANALYZE_AFTER:
            self.analyze_rows = not self._analyze()

    def _analyze(self) -> bool:
        """Give the planner statistics of the rows table (see `analyze_rows`); returns whether it has them now."""
        self.session.execute(text("ANALYZE training_rows"))
        return True

    def _settle(
        self, produced: dict[Key, dict[str, Any]], existing: dict[Key, _Old]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Complete the produced rows (project, content hash, build time); return those to write: new keys
        (inserted), and keys that changed or come back after being removed (upserted)."""
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
            hashed = digest(row["chosen"]) + digest(row["rejected"]) + digest(row["completion"])
            row["content_hash"] = hashlib.sha256(meta + hashed).hexdigest()
            row["project_id"], row["active"], row["built_at"] = self.project_id, True, self.built_at
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
