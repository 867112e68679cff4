"""Dataset snapshots: an immutable, hashed copy of a project's active training rows, split into train and eval so
that no prompt sits on both sides, and its export in TRL's own column format.

The split's unit is the prompt group (rows sharing `prompt_hash`): rows of one prompt are near-duplicates of each
other, so splitting inside a group would leak eval answers into training. The split is stratified by the richest
kind of row a group holds (edit_pair, then sft, choice_pair, kto): each stratum is split on its own, so the eval
split holds edited generations whenever the snapshot holds two groups of them, however many KTO rows surround
them (an evaluation needs the users' final code to replay).
- split_by=time: within each stratum, the newest groups (by their latest `occurred_at`) are eval; `eval_fraction`
  of the stratum's groups, rounded, at least one when it has two groups or more, never all of them.
- split_by=user: a group belongs to its earliest user (the user of its earliest row that has one; a group with no
  user is its own owner), and an owner is eval when a stable hash of it falls below `eval_fraction`. So a user's
  prompts land on one side (except a prompt that another user asked first), and stay there in later snapshots.
  With two owners or more, at least one is eval and one is train; a lone owner is train. A stratum with two owners
  or more and none held out gets its first owner by hash held out as well (so a user's prompts stay on one side).
"""

import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import ValidationError
from sqlalchemy import ColumnElement, Select, Table, cast, func, insert, literal, literal_column, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from core.db import utcnow
from core.errors import InvalidInput, NotFound
from core.projects import Project
from feedback.config import DatasetConfig
from feedback.models import DatasetBuild, DatasetSnapshot, SnapshotRow, TrainingRow
from feedback.snapshot_schemas import BuildOut, SnapshotDetail, SnapshotOut

KINDS = ("edit_pair", "choice_pair", "kto", "sft")
FAMILIES = {"preference": ("edit_pair", "choice_pair"), "kto": ("kto",), "sft": ("sft",)}
SPLITS = ("train", "eval")
DIGEST_VERSION = b"editloop-snapshot-v1\n"
_ROWS: Table = TrainingRow.__table__  # type: ignore[assignment]
_SNAP_ROWS: Table = SnapshotRow.__table__  # type: ignore[assignment]
_COPIED = [c.name for c in _SNAP_ROWS.columns if c.name not in ("id", "snapshot_id", "split")]
_EXPORT_NAME = re.compile(r"^(preference|kto|sft)(-chat)?-(train|eval)\.(jsonl|parquet)$")


def dataset_config(project: Project) -> DatasetConfig:
    try:
        return DatasetConfig(**(project.settings or {}).get("dataset", {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise InvalidInput(f"settings.dataset.{field}: {err['msg']}") from None


def cut_snapshot(
    session: Session, project_id: int, *, build_id: int | None = None, now: datetime | None = None
) -> DatasetSnapshot:
    """Copy the project's active training rows into a new snapshot. The copy is one INSERT ... SELECT, and the
    split, hash and counts are computed from the copy, so they describe exactly the rows it holds even while a
    build changes `training_rows` concurrently."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    config = dataset_config(project)
    if build_id is not None:
        build = session.get(DatasetBuild, build_id)
        if build is None or build.project_id != project_id:
            raise NotFound(f"dataset build {build_id} does not exist")
    # Filled in below, before the transaction that creates it commits; nothing changes it afterwards.
    snapshot = DatasetSnapshot(
        project_id=project_id,
        created_at=now or utcnow(),
        sha256="",
        config=config.model_dump(mode="json"),
        counts={},
        row_count=0,
        build_id=build_id,
    )
    session.add(snapshot)
    session.flush()
    source = select(literal(snapshot.id), literal("train"), *[_ROWS.c[name] for name in _COPIED]).where(
        _ROWS.c.project_id == project_id, _ROWS.c.active.is_(True)
    )
    session.execute(insert(_SNAP_ROWS).from_select(["snapshot_id", "split", *_COPIED], source))
    held_out = _eval_groups(_groups(session, snapshot.id), config)
    if held_out:
        session.execute(
            update(_SNAP_ROWS)
            .where(_SNAP_ROWS.c.snapshot_id == snapshot.id, _SNAP_ROWS.c.prompt_hash.in_(_values(session, held_out)))
            .values(split="eval")
        )
    snapshot.sha256, snapshot.counts, snapshot.row_count = _digest(session, snapshot.id)
    session.flush()
    return snapshot


# The strata of the split, richest first: a group belongs to the first kind it holds rows of.
_STRATA = ("edit_pair", "sft", "choice_pair", "kto")


class _Group:
    __slots__ = ("latest", "first", "stratum")

    def __init__(self) -> None:
        self.latest: datetime | None = None
        self.first: tuple[datetime, str, str, str] | None = None  # (occurred_at, kind, source_key, user)
        self.stratum = len(_STRATA)  # index into _STRATA of its richest kind


def _groups(session: Session, snapshot_id: int) -> dict[str, _Group]:
    c = _SNAP_ROWS.c
    query = select(c.prompt_hash, c.occurred_at, c.kind, c.source_key, c.user).where(c.snapshot_id == snapshot_id)
    groups: dict[str, _Group] = {}
    for prompt_hash, occurred_at, kind, source_key, user in session.execute(query):
        group = groups.setdefault(prompt_hash, _Group())
        group.latest = occurred_at if group.latest is None else max(group.latest, occurred_at)
        if kind in _STRATA:
            group.stratum = min(group.stratum, _STRATA.index(kind))
        if user is not None and (group.first is None or (occurred_at, kind, source_key, user) < group.first):
            group.first = (occurred_at, kind, source_key, user)
    return groups


def _eval_groups(groups: dict[str, _Group], config: DatasetConfig) -> list[str]:
    """The prompt hashes held out for evaluation, sorted (see the module docstring for the rule)."""
    if len(groups) < 2 or config.eval_fraction == 0:
        return []
    strata: dict[int, list[str]] = {}
    for h, g in groups.items():
        strata.setdefault(g.stratum, []).append(h)
    if config.split_by == "time":
        held_out: list[str] = []
        for members in strata.values():
            if len(members) < 2:
                continue
            n = min(len(members) - 1, max(1, math.floor(len(members) * config.eval_fraction + 0.5)))
            held_out += sorted(members, key=lambda h: (groups[h].latest, h), reverse=True)[:n]
        return sorted(held_out)
    owner = {h: f"user:{g.first[3]}" if g.first else f"prompt:{h}" for h, g in groups.items()}
    bucket = {o: int(hashlib.sha256(o.encode()).hexdigest()[:15], 16) / 16**15 for o in set(owner.values())}
    held = {o for o, b in bucket.items() if b < config.eval_fraction}
    if held == set(bucket):
        held.discard(max(bucket, key=lambda o: (bucket[o], o)))
    if not held and len(bucket) >= 2:
        held.add(min(bucket, key=lambda o: (bucket[o], o)))
    for members in strata.values():
        owners = {owner[h] for h in members}
        if len(owners) >= 2 and not owners & held and len(held) + 1 < len(bucket):
            held.add(min(owners, key=lambda o: (bucket[o], o)))
    return sorted(h for h, o in owner.items() if o in held)


def _values(session: Session, values: list[str]) -> Select[Any]:
    """Many strings as a subquery over one JSON parameter: `IN` with a parameter each would hit the drivers'
    parameter limits (SQLite 32766, Postgres 65535) on a large dataset."""
    payload = json.dumps(values)
    if _dialect(session) == "postgresql":
        return select(func.jsonb_array_elements_text(cast(literal(payload), JSONB)))
    return select(literal_column("value")).select_from(func.json_each(literal(payload)))


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _binary(session: Session, column: Any) -> ColumnElement[Any]:
    """Byte order on both backends (Postgres sorts by the database's locale otherwise), so a snapshot's hash and
    its export's row order do not depend on the backend."""
    return column.collate("C" if _dialect(session) == "postgresql" else "BINARY")


def _snapshot_rows(session: Session, snapshot_id: int, *where: Any) -> Iterator[Row[Any]]:
    c = _SNAP_ROWS.c
    query = (
        select(_SNAP_ROWS)
        .where(c.snapshot_id == snapshot_id, *where)
        .order_by(c.kind, _binary(session, c.source_key))
        .execution_options(yield_per=2000)
    )
    yield from session.execute(query)


def _digest(session: Session, snapshot_id: int) -> tuple[str, dict[str, dict[str, int]], int]:
    """sha256 over one canonical JSON line per row, rows sorted by (kind, source_key), which is unique."""
    digest = hashlib.sha256(DIGEST_VERSION)
    counts = {kind: {split: 0 for split in SPLITS} for kind in KINDS}
    total = 0
    for row in _snapshot_rows(session, snapshot_id):
        digest.update(orjson.dumps({name: row._mapping[name] for name in ["split", *_COPIED]}, option=_CANONICAL))
        counts.setdefault(row.kind, {split: 0 for split in SPLITS})[row.split] += 1
        total += 1
    return digest.hexdigest(), counts, total


def redigest(session: Session, snapshot_id: int) -> tuple[str, dict[str, dict[str, int]], int]:
    """The hash, counts and row count of what a snapshot holds now (after a deletion took rows out of it)."""
    return _digest(session, snapshot_id)


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def list_snapshots(session: Session, project_id: int) -> list[DatasetSnapshot]:
    """Newest first."""
    query = select(DatasetSnapshot).where(DatasetSnapshot.project_id == project_id).order_by(DatasetSnapshot.id.desc())
    return list(session.scalars(query))


def get_snapshot(session: Session, project_id: int, snapshot_id: int) -> DatasetSnapshot:
    snapshot = session.scalar(
        select(DatasetSnapshot).where(DatasetSnapshot.id == snapshot_id, DatasetSnapshot.project_id == project_id)
    )
    if snapshot is None:
        raise NotFound(f"dataset snapshot {snapshot_id} does not exist")
    return snapshot


def snapshot_detail(session: Session, project_id: int, snapshot_id: int) -> SnapshotDetail:
    snapshot = get_snapshot(session, project_id, snapshot_id)
    build = session.get(DatasetBuild, snapshot.build_id) if snapshot.build_id is not None else None
    summary = SnapshotOut.model_validate(snapshot).model_dump()
    return SnapshotDetail(**summary, config=snapshot.config, build=BuildOut.model_validate(build) if build else None)


def export_snapshot(
    session: Session, project_id: int, snapshot_id: int, out_dir: Path, fmt: Literal["jsonl", "parquet"]
) -> list[Path]:
    """Write the snapshot as TRL datasets, one file per (kind family, split), and `manifest.json`; returns the data
    files. Conversational rows (with `messages`) go to `{family}-chat-{split}`: one column cannot hold a string in
    some rows and a message list in others, and TRL decides the format from the first row. Empty files are not
    written. Columns prefixed `editloop_` trace each row to its generations and events; trainers drop them."""
    if fmt not in ("jsonl", "parquet"):
        raise InvalidInput(f"format: {fmt!r} is not one of 'jsonl', 'parquet'")
    snapshot = get_snapshot(session, project_id, snapshot_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    for family, kinds in FAMILIES.items():
        for split in SPLITS:
            writers: dict[bool, _Writer] = {}
            try:
                where = (_SNAP_ROWS.c.kind.in_(kinds), _SNAP_ROWS.c.split == split)
                for row in _snapshot_rows(session, snapshot.id, *where):
                    chat = row.messages is not None
                    if chat not in writers:
                        name = f"{family}{'-chat' if chat else ''}-{split}.{fmt}"
                        writers[chat] = _Writer(out_dir / name, fmt, family, chat)
                    writers[chat].add(_record(family, row))
            except BaseException:
                for writer in writers.values():
                    writer.abort()
                raise
            for chat in sorted(writers):
                written.append({"family": family, "split": split, "conversational": chat, **writers[chat].finish()})
    _remove_stale(out_dir, {f["name"] for f in written})
    manifest = {
        "snapshot_id": snapshot.id,
        "project_id": snapshot.project_id,
        "created_at": snapshot.created_at.isoformat(),
        "sha256": snapshot.sha256,
        "row_count": snapshot.row_count,
        "counts": snapshot.counts,
        "config": snapshot.config,
        "format": fmt,
        "files": written,
    }
    _atomic_write(out_dir / "manifest.json", lambda f: f.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2)))
    return [out_dir / f["name"] for f in written]


def _record(family: str, row: Row[Any]) -> dict[str, Any]:
    chat = row.messages is not None

    def reply(text: str | None) -> Any:
        return [{"role": "assistant", "content": text}] if chat else text

    record: dict[str, Any] = {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in row.messages] if chat else row.prompt
    }
    if family == "preference":
        record["chosen"], record["rejected"] = reply(row.chosen), reply(row.rejected)
    else:
        record["completion"] = reply(row.completion)
    if family == "kto":
        record["label"] = row.label
    record["editloop_kind"] = row.kind
    record["editloop_source_key"] = row.source_key
    record["editloop_generation_ids"] = list(row.generation_ids)
    record["editloop_event_ids"] = list(row.event_ids)
    return record


class _Writer:
    """One export file, written to a temporary name and renamed into place when complete."""

    BATCH = 2000

    def __init__(self, path: Path, fmt: str, family: str, chat: bool) -> None:
        self.path, self.fmt, self.rows = path, fmt, 0
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.batch: list[dict[str, Any]] = []
        self.parquet: Any = None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self.schema = _arrow_schema(family, chat)
            self.parquet = pq.ParquetWriter(self.tmp, self.schema)
        else:
            self.file = self.tmp.open("wb")

    def add(self, record: dict[str, Any]) -> None:
        self.rows += 1
        if self.parquet is None:
            self.file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            return
        self.batch.append(record)
        if len(self.batch) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.batch:
            self.parquet.write_table(pa.Table.from_pylist(self.batch, schema=self.schema))
            self.batch = []

    def abort(self) -> None:
        (self.file if self.parquet is None else self.parquet).close()
        self.tmp.unlink(missing_ok=True)

    def finish(self) -> dict[str, Any]:
        if self.parquet is None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        else:
            self._flush()
            self.parquet.close()
        sha256 = _file_sha256(self.tmp)
        os.replace(self.tmp, self.path)
        return {"name": self.path.name, "rows": self.rows, "sha256": sha256}


def _arrow_schema(family: str, chat: bool) -> Any:
    import pyarrow as pa

    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    text = messages if chat else pa.string()
    fields = [("prompt", text)]
    fields += [("chosen", text), ("rejected", text)] if family == "preference" else [("completion", text)]
    if family == "kto":
        fields.append(("label", pa.bool_()))
    fields += [("editloop_kind", pa.string()), ("editloop_source_key", pa.string())]
    fields += [("editloop_generation_ids", pa.list_(pa.string())), ("editloop_event_ids", pa.list_(pa.string()))]
    return pa.schema(fields)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Files that an earlier export to this folder wrote and this one does not, so that a glob over the folder
    never mixes two snapshots. Only names listed in the old manifest and shaped like ours are removed."""
    try:
        old = orjson.loads((out_dir / "manifest.json").read_bytes())
        names = [f["name"] for f in old.get("files", [])]
    except (OSError, orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
        return
    for name in names:
        if isinstance(name, str) and _EXPORT_NAME.match(name) and name not in keep:
            (out_dir / name).unlink(missing_ok=True)


def snapshot_records(
    session: Session, snapshot_id: int, kinds: tuple[str, ...], split: str, limit: int | None = None
) -> list[dict[str, Any]]:
    """A snapshot's rows of some kinds and one split, as the TRL records `export_snapshot` writes (same order)."""
    family = next(f for f, members in FAMILIES.items() if set(kinds) <= set(members))
    records = []
    for row in _snapshot_rows(session, snapshot_id, _SNAP_ROWS.c.kind.in_(kinds), _SNAP_ROWS.c.split == split):
        records.append(_record(family, row))
        if limit is not None and len(records) >= limit:
            break
    return records
