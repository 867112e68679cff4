#!/usr/bin/env python
"""Training-row benchmark: how fast does `feedback.rows.build_rows` turn generations into training rows?

Creates a throw-away Postgres database, migrates it, bulk-loads N generations with realistic Python code (what the
ingest service stores: the events, whose payloads hold the code, and the `generations` rows that name them, with
outcome and edit distance filled by `feedback.join.derive`), runs ANALYZE, then times in this one process: a full
build, a second build with no new feedback (it re-reads only the overlap), and an incremental build after `--touch`
generations got a new edit. Then, from empty tables each time, a full build in one process and a partitioned build
(feedback/partitions.py) by 1 and by 2 worker processes (`--workers`), each with the digest of the rows it made: the
digests must be equal. Prints a table with the phases each build spent its time in and the CPU time of this
process and of the server's backend, and writes everything to benchmarks/results/pairs-<UTC timestamp>.json.

Run:  .venv/bin/python benchmarks/pairs.py            (about a minute for 100,000 generations; see --help)
"""

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import text  # noqa: E402

from core.db import get_engine, session_scope  # noqa: E402
from core.migrate import upgrade  # noqa: E402
from core.projects import create_project  # noqa: E402
from feedback import syntax, texts  # noqa: E402
from feedback.bulk import BulkWriter  # noqa: E402
from feedback.join import ROW_CODE, derive, empty_row, prompt_hash  # noqa: E402
from feedback.models import FeedbackEvent, Generation, TrainingRow  # noqa: E402
from feedback.partitions import plan_build  # noqa: E402
from feedback.rows import build_rows  # noqa: E402

TARGET = 10_000  # generations/s
NAMES = [
    "items", "values", "records", "rows", "data", "result", "total", "count", "index", "key", "value", "buffer",
    "config", "options", "path", "name", "user", "request", "response", "payload", "offset", "limit", "batch",
]  # fmt: skip
VERBS = ["load", "parse", "compute", "merge", "filter", "normalize", "validate", "render", "fetch", "update"]
STATEMENTS = [
    "{a} = {b}.get('{k}', {n})",
    "for {i} in range(len({a})):\n        {b}.append({a}[{i}] * {n})",
    "if {a} is None:\n        raise ValueError('{k} is missing')",
    "{a} = [{x} for {x} in {b} if {x} > {n}]",
    "with open({a}) as fh:\n        {b} = fh.read()",
    "logger.info('{k}: %s', {a})",
    "try:\n        {a} = int({b})\n    except (TypeError, ValueError):\n        {a} = {n}",
    "# {k} is checked by the caller",
    "{a} = sorted({b}, key=lambda {x}: {x}.{k}, reverse=True)",
    "{a}.update({{'{k}': {b}, 'size': len({b})}})",
    "while {a} and len({b}) < {n}:\n        {b}.append({a}.pop())",
    "{a} = {{{x}: {b}[{x}] for {x} in {b} if not {x}.startswith('_')}}",
]  # fmt: skip
_G = Generation.__table__
_COLUMNS = [c.name for c in _G.columns if c.name != "id"]
_WRITE = BulkWriter(
    _G, _COLUMNS, conflict=["project_id", "generation_id"], update=[c for c in _COLUMNS if c != "project_id"]
)
_ROW_COLUMNS = [c.name for c in TrainingRow.__table__.columns]
_E = FeedbackEvent.__table__
_EVENT_COLUMNS = [c.name for c in _E.columns]  # with `id`: the loader numbers the events (see `Events`)
_WRITE_EVENTS = BulkWriter(_E, _EVENT_COLUMNS, conflict=["project_id", "event_id"])


_SETVAL = text("SELECT setval(pg_get_serial_sequence('feedback_events', 'id'), max(id)) FROM feedback_events")


class Events:
    """The events behind the generation rows, as ingest would have stored them (`generations` holds their ids, and
    their payloads hold the code). Numbered here, so that a row knows its events' ids before they are written; the
    table's sequence is moved past them at the end (`close`)."""

    def __init__(self, project_id: int) -> None:
        self.project_id, self.next_id, self.rows = project_id, 1, []

    def add(self, gid: str, event_id: str, kind: str, at: datetime, payload: dict[str, Any], excluded: bool) -> int:
        pk, self.next_id = self.next_id, self.next_id + 1
        self.rows.append(
            {
                "id": pk,
                "project_id": self.project_id,
                "event_id": event_id,
                "type": kind,
                "generation_id": gid,
                "occurred_at": at,
                "received_at": at,
                "payload": payload,
                "secrets": None,
                "excluded": excluded,
            }
        )
        return pk

    def flush(self, session: Any) -> None:
        _WRITE_EVENTS.write(session, self.rows)
        self.rows = []

    def close(self, session: Any) -> None:
        self.flush(session)
        session.execute(_SETVAL)


def stored(row: dict[str, Any], events: Events) -> dict[str, Any]:
    """A row folded in memory (with its code), as `generations` stores it: its events written, their ids kept."""
    gid, excluded = row["generation_id"], row["excluded"]
    code = {} if excluded else {"prompt": row["prompt"], "completion": row["completion"]}
    shown = code | {k: row[k] for k in ("model", "language", "file_path", "user")}
    row["shown_event_pk"] = events.add(gid, row["shown_event_id"], "generation", row["shown_at"], shown, excluded)
    if row["decision"] is not None:
        pk = events.add(gid, row["decision_event_id"], row["decision"], row["decided_at"], {}, False)
        row["decision_event_pk"] = pk
    if row["edited_event_id"] is not None:
        edit = {} if excluded else {"final_text": row["final_text"]}
        row["edited_event_pk"] = events.add(gid, row["edited_event_id"], "edited", row["edited_at"], edit, False)
    if row["rating_event_id"] is not None:
        events.add(gid, row["rating_event_id"], "rating", row["rated_at"], {"score": row["rating_score"]}, False)
    for field in ROW_CODE:
        del row[field]
    return row


class Workload:
    """Seeded generator of generation rows: code, outcomes and edits in the proportions of --help."""

    def __init__(self, seed: int, project_id: int, t0: datetime, spread_s: float, n: int) -> None:
        self.rng, self.project_id, self.t0, self.spread_s, self.n = random.Random(seed), project_id, t0, spread_s, n
        self.popular = [self.prompt() for _ in range(max(1, n // 40))]  # shared prompts: choice pairs
        self.kinds: dict[str, int] = {}

    def words(self) -> dict[str, Any]:
        r = self.rng
        a, b = r.sample(NAMES, 2)
        return {"a": a, "b": b, "k": r.choice(NAMES), "n": r.randint(0, 99), "i": "i", "x": r.choice("xyz")}

    def body(self, chars: int) -> str:
        lines: list[str] = []
        while sum(map(len, lines)) < chars:
            lines.append("    " + self.rng.choice(STATEMENTS).format(**self.words()) + "\n")
        lines.append(f"    return {self.words()['a']}\n")
        return "".join(lines)

    def prompt(self) -> str:
        r = self.rng
        name = f"{r.choice(VERBS)}_{r.choice(NAMES)}"
        args = ", ".join(r.sample(NAMES, r.randint(1, 4)))
        head = "import logging\nimport os\n\nlogger = logging.getLogger(__name__)\n\n\n"
        helper = f"def _{r.choice(VERBS)}({r.choice(NAMES)}):\n" + self.body(r.randint(100, 500)) + "\n\n"
        return head + helper + f'def {name}({args}):\n    """{name.replace("_", " ").capitalize()}."""\n'

    def edit(self, code: str) -> tuple[str, str]:
        """A realistic edit of the completion, and its kind. Most keep the code valid: lines are added, replaced
        or dropped only where a statement may stand."""
        r = self.rng
        roll = r.random()
        lines = code.splitlines(keepends=True)
        if roll < 0.08:  # whitespace only: trivial
            i = r.randrange(len(lines))
            lines[i] = lines[i].rstrip("\n") + "  \n" if r.random() < 0.5 else lines[i] + "\n"
            return "".join(lines), "trivial"
        if roll < 0.11:  # the user wrote something else
            w = self.words()
            return f"    return [{w['x']} for {w['x']} in {w['a']} if {w['x']}.{w['k']}]\n", "rewrite"
        if roll < 0.13:  # captured while broken: a guard without its colon
            w = self.words()
            lines.insert(len(lines) - 1, f"    if not {w['a']} and {w['b']}\n        return {w['b']}\n")
            return "".join(lines), "broken"
        if roll < 0.135:
            return code + "    token = '<secret:openai_api_key>'\n", "secret"
        for step in range(r.randint(2, 3)):
            spots = [i for i in range(1, len(lines)) if _statement_start(lines, i)]
            op = r.randrange(1, 3) if step == 0 else r.randrange(4)  # at least one line added or replaced
            if op == 0:  # rename a variable
                old = r.choice([n for n in NAMES if n in code] or NAMES)
                lines = [line.replace(old, r.choice(NAMES)) for line in lines]
            elif op == 1 and spots:  # add a guard
                w = self.words()
                lines.insert(r.choice(spots), f"    if not {w['a']}:\n        return {w['b']}\n")
            elif op == 2 and len(spots) > 1:  # replace a statement that is one line
                single = [i for i in spots if _statement_start(lines, i + 1) and i + 1 < len(lines)]
                if single:
                    lines[r.choice(single)] = "    " + r.choice(STATEMENTS[:1] + STATEMENTS[3:4]).format(**self.words())
            else:  # change a constant
                i = r.randrange(len(lines))
                lines[i] = lines[i].replace("0", str(r.randint(1, 9)), 1)
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines), "edit"

    def row(self, index: int, gid: str, updated_at: datetime) -> dict[str, Any]:
        r = self.rng
        row = empty_row(self.project_id, gid, updated_at)
        prompt = r.choice(self.popular) if r.random() < 0.2 else self.prompt()
        completion = self.body(r.randint(300, 1500))
        shown = self.t0 + timedelta(seconds=self.spread_s * index / self.n)
        row.update(
            prompt=prompt,
            prompt_hash=prompt_hash(prompt, None),
            completion=completion,
            model="base",
            language="python",
            file_path=f"src/pkg/{r.choice(NAMES)}.py",
            user=f"user-{r.randrange(200)}",
            shown_at=shown,
            shown_event_id=f"{gid}:gen",
            event_count=1,
        )
        roll = r.random()
        if roll < 0.60:
            row["final_text"], kind = self.edit(completion)
            row["edited_at"], row["edited_event_id"] = shown + timedelta(seconds=20), f"{gid}:edited:{index}"
        elif roll < 0.90:
            kind = "accepted" if roll < 0.75 else "rejected"
            row["decision"], row["decided_at"], row["decision_event_id"] = (
                kind,
                shown + timedelta(seconds=2),
                f"{gid}:d",
            )
        else:
            kind = "shown"
        if r.random() < 0.10:
            good = r.random() < (0.7 if kind in ("accepted", "edit", "trivial") else 0.3)
            row["rating_score"], row["rated_at"] = (1.0 if good else -1.0), shown + timedelta(seconds=30)
            row["rating_event_id"] = f"{gid}:rating"
        if r.random() < 0.005:
            row["excluded"], kind = True, "excluded"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        derive(row)
        row["created_at"], row["updated_at"] = shown, updated_at
        row["event_count"] += sum(row[k] is not None for k in ("decision", "edited_event_id", "rating_event_id"))
        return row


def _statement_start(lines: list[str], i: int) -> bool:
    """Whether a top-level statement of the function body may start at line i (so one may be put before it)."""
    if i >= len(lines):
        return True
    line, before = lines[i], lines[i - 1].rstrip()
    head = line[4:5]
    return (
        line.startswith("    ")
        and head not in (" ", "")
        and not before.endswith(":")
        and not line[4:].startswith(("except", "else", "elif", "finally"))
    )


def load(url: str, work: Workload, n: int, t0: datetime, spread_s: float) -> Events:
    events = Events(work.project_id)
    batch: list[dict[str, Any]] = []
    for i in range(n):
        updated = t0 + timedelta(seconds=spread_s * i / n + 60)  # feedback arrived over the spread
        batch.append(stored(work.row(i, f"gen-{i:08d}", updated), events))
        if len(batch) == 2000 or i == n - 1:
            with session_scope(url) as session:
                events.flush(session)
                _WRITE.write(session, batch)
            batch = []
    with session_scope(url) as session:
        events.close(session)
    return events


def touch(url: str, work: Workload, events: Events, n: int, total: int, now: datetime) -> None:
    """A new, later edit of `n` existing generations, as ingest would store and fold it."""
    gids = [f"gen-{i:08d}" for i in sorted(work.rng.sample(range(total), n))]
    with session_scope(url) as session:
        query = texts.select_with_code(_G).where(_G.c.project_id == work.project_id, _G.c.generation_id.in_(gids))
        rows = []
        for read in session.execute(query).mappings():
            row = {c: read[c] for c in _COLUMNS} | texts.code_of_mapping(dict(read))
            if row["completion"] is None:  # excluded: no code to edit
                continue
            gid = row["generation_id"]
            row["final_text"], _ = work.edit(row["completion"])
            row["edited_at"], row["edited_event_id"] = now, f"{gid}:edited:again"
            payload = {"final_text": row["final_text"]}
            row["edited_event_pk"] = events.add(gid, row["edited_event_id"], "edited", now, payload, False)
            row["event_count"] += 1
            derive(row)
            row["updated_at"] = now
            for field in ROW_CODE:
                del row[field]
            rows.append(row)
        events.close(session)
        _WRITE.write(session, rows)


def server_cpu_s(pid: int) -> float | None:
    """CPU seconds a Postgres backend has used, when the server runs on this machine (else None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_build(url: str, project_id: int, batch_size: int, profile: bool, cold: bool = False) -> dict[str, Any]:
    """One build in its own transaction. Besides wall time, the CPU time of this process and of the server's
    backend (when local): on a shared machine those vary less than the wall time, so they compare variants.
    `cold` empties the process's cache of syntax verdicts first (a worker's first build after it started)."""
    if cold:
        syntax.clear_cache()
    profiler = cProfile.Profile() if profile else None
    with session_scope(url) as session:
        pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        server_before, cpu_before = server_cpu_s(pid), time.process_time()
        clock = time.perf_counter()
        if profiler:
            profiler.enable()
        build = build_rows(session, project_id, batch_size=batch_size)
        if profiler:
            profiler.disable()
        call_s = time.perf_counter() - clock
        clock = time.perf_counter()
    commit_s = time.perf_counter() - clock
    cpu_s = time.process_time() - cpu_before
    server_after = server_cpu_s(pid)
    server_s = None if server_before is None or server_after is None else server_after - server_before
    produced = sum(build.report["rows"].values())
    total_s = call_s + commit_s
    result = {
        "generations_read": build.generations_read,
        "generations_derived": build.report["generations_derived"],
        "rows_produced": produced,
        "rows_added": build.rows_added,
        "rows_changed": build.rows_changed,
        "rows_removed": build.rows_removed,
        "build_s": round(call_s, 3),
        "commit_s": round(commit_s, 3),
        "client_cpu_s": round(cpu_s, 3),
        "server_cpu_s": None if server_s is None else round(server_s, 3),
        "generations_per_s": round(build.generations_read / total_s) if total_s else None,
        "rows_per_s": round(produced / total_s) if total_s else None,
        "phases_s": build.report["seconds"],
        "report": build.report,
    }
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        result["profile"] = out.getvalue()
    return result


def rows_digest(url: str, project_id: int) -> str:
    """sha256 over the project's rows, every column but the id and the build time, in key order: equal digests are
    byte-identical rows."""
    import hashlib

    columns = [c for c in _ROW_COLUMNS if c not in ("id", "built_at")]
    digest = hashlib.sha256()
    with get_engine(url).connect() as conn:
        cursor = conn.exec_driver_sql(
            f"SELECT {', '.join(columns)} FROM training_rows WHERE project_id = %(p)s ORDER BY kind, source_key",
            {"p": project_id},
        )
        for row in cursor:
            digest.update(json.dumps(list(row), default=str).encode())
    return digest.hexdigest()


def reset(url: str) -> None:
    """Empty the rows and builds (one project per benchmark database), as before a first build."""
    with get_engine(url).connect() as conn:
        conn.exec_driver_sql("TRUNCATE training_rows, dataset_build_partitions, dataset_builds CASCADE")
        conn.commit()
    syntax.clear_cache()


WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
from feedback.partitions import work
sys.stdin.readline()  # imported and connected: wait for the start
print(work(sys.argv[2], sys.argv[3], sys.argv[4]), flush=True)
"""


def partitioned_build(url: str, project_id: int, workers: int, parts: int) -> dict[str, Any]:
    """A partitioned full build by `workers` processes started beforehand (as running workers are); timed from the
    plan to the last worker's exit, which comes after the build finished."""
    import subprocess

    with session_scope(url) as session:
        plan = plan_build(session, project_id, parts)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(REPO), url, plan, f"w{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    time.sleep(5)  # imports: a running worker has them
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    built = [int(proc.communicate()[0].strip() or 0) for proc in procs]
    seconds = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The workers' CPU seconds (their imports before the clock included): on a shared machine, with the wall clock,
    # it tells whether the workers ran concurrently or waited for cores.
    workers_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    with session_scope(url) as session:
        read = session.execute(
            text("SELECT generations_read, report FROM dataset_builds WHERE project_id = :p ORDER BY id DESC LIMIT 1"),
            {"p": project_id},
        ).one()
    return {
        "workers": workers,
        "partitions": parts,
        "partitions_per_worker": built,
        "workers_cpu_s": round(workers_cpu, 3),
        "seconds": round(seconds, 3),
        "generations_read": read.generations_read,
        "generations_per_s": round(read.generations_read / seconds),
        "rows": read.report["rows"],
        "phases_s": read.report["seconds"],  # summed over the partitions: CPU-ish seconds across the workers
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    head = ["build", "gens read", "derived", "rows", "added", "changed", "removed", "seconds", "gens/s", "rows/s"]
    head += ["read", "derive", "syntax", "compare", "write", "commit", "cpu", "server cpu"]
    lines = [head]
    for name, r in results.items():
        ph = r["phases_s"]
        lines.append(
            [name, f"{r['generations_read']:,}", f"{r['generations_derived']:,}", f"{r['rows_produced']:,}"]
            + [f"{r['rows_added']:,}", f"{r['rows_changed']:,}", f"{r['rows_removed']:,}"]
            + [f"{r['build_s'] + r['commit_s']:.2f}", f"{r['generations_per_s'] or 0:,}", f"{r['rows_per_s'] or 0:,}"]
            + [f"{ph.get(k, 0):.2f}" for k in ("read", "derive", "syntax", "compare", "write")]
            + [f"{r['commit_s']:.2f}", f"{r['client_cpu_s']:.2f}"]
            + ["-" if r["server_cpu_s"] is None else f"{r['server_cpu_s']:.2f}"]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in lines
    )


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=(
            "Time feedback.rows.build_rows on a fresh Postgres database loaded with N generations: ~60% edited "
            "(~8% of edits whitespace-only, ~3% rewrites, ~2% broken syntax, some secrets), 15% accepted, "
            "15% rejected, 10% shown only; ~10% rated; 20% share a popular prompt (choice pairs); Python code "
            "of 300-1500 characters. Target: >= 10,000 generations/s."
        )
    )
    p.add_argument(
        "--pg",
        default=os.environ.get("EDITLOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="libpq URL of a database where this user may CREATE DATABASE (default: $EDITLOOP_BENCH_PG or local)",
    )
    p.add_argument("-n", "--generations", type=int, default=100_000, help="generations to load (default 100000)")
    p.add_argument("--batch-size", type=int, default=5000, help="build_rows batch size (default 5000)")
    p.add_argument("--touch", type=int, default=1000, help="generations edited again before the incremental build")
    p.add_argument("--spread-s", type=float, default=3600.0, help="seconds over which the feedback arrived")
    p.add_argument("--seed", type=int, default=7, help="workload seed")
    p.add_argument(
        "--no-syntax-check",
        action="store_true",
        help="set the project's check_python_syntax to false (to see what the Python parser costs)",
    )
    p.add_argument("--profile", action="store_true", help="cProfile the full build (its figures are then lower)")
    p.add_argument(
        "--cold-cache",
        action="store_true",
        help="empty the syntax-verdict cache before every build (by default the later builds find the verdicts "
        "of the earlier ones, as in a worker process that keeps running)",
    )
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end (prints its URL)")
    p.add_argument(
        "--workers", default="1,2", help="worker processes of the partitioned builds, comma-separated ('' skips them)"
    )
    p.add_argument("--parts", type=int, default=8, help="partitions of a partitioned build (default 8)")
    p.add_argument("--results-dir", type=Path, default=HERE / "results", help="where the JSON results go")
    args = p.parse_args(argv)

    import psycopg

    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    dbname = f"editloop_bench_pairs_{uuid.uuid4().hex[:10]}"
    base = args.pg.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{dbname}"
    started = datetime.now(UTC)
    created = False
    try:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
            created = True
            pg_info = {
                k: conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                for k in ("server_version", "synchronous_commit", "fsync", "shared_buffers", "work_mem")
            }
        upgrade(url)
        with session_scope(url) as session:
            project = create_project(session, "bench")
            if args.no_syntax_check:
                project.settings = {"dataset": {"check_python_syntax": False}}
            session.flush()
            project_id = project.id

        clock = time.perf_counter()
        t0 = started - timedelta(seconds=args.spread_s + 120)
        work = Workload(args.seed, project_id, t0, args.spread_s, args.generations)
        events = load(url, work, args.generations, t0, args.spread_s)
        with get_engine(url).connect() as conn:
            conn.exec_driver_sql("ANALYZE generations, feedback_events")  # as autovacuum would have, on a live database
            conn.commit()
        load_s = time.perf_counter() - clock
        print(f"loaded {args.generations:,} generations in {load_s:.1f}s: {work.kinds}", flush=True)

        load_before = os.getloadavg()
        results = {"full": timed_build(url, project_id, args.batch_size, args.profile)}
        with get_engine(url).connect() as conn:
            conn.exec_driver_sql("ANALYZE training_rows")
            conn.commit()
        results["no-op"] = timed_build(url, project_id, args.batch_size, False, args.cold_cache)
        if args.touch:
            touch(url, work, events, min(args.touch, args.generations), args.generations, datetime.now(UTC))
            results[f"touched {args.touch:,}"] = timed_build(url, project_id, args.batch_size, False, args.cold_cache)
        scale: dict[str, Any] = {}
        if args.workers:
            reset(url)
            clock = time.perf_counter()
            scale["one process"] = {
                **timed_build(url, project_id, args.batch_size, False),
                "digest": rows_digest(url, project_id),
            }
            for workers in [int(w) for w in args.workers.split(",")]:
                reset(url)
                run = partitioned_build(url, project_id, workers, args.parts)
                scale[f"{workers} worker(s)"] = {**run, "digest": rows_digest(url, project_id)}
        load_after = os.getloadavg()

        printed = table(results)
        print()
        print(printed)
        full = results["full"]
        verdict = "met" if (full["generations_per_s"] or 0) >= TARGET else "NOT met"
        print(f"\nfull build: {full['generations_per_s']:,} generations/s (target {TARGET:,}: {verdict})")
        print(f"rows by kind: {full['report']['rows']}")
        print(f"gates: {full['report']['gates']}")
        for name, r in scale.items():
            cpu = f", workers' CPU {r['workers_cpu_s']} s" if "workers_cpu_s" in r else f", CPU {r['client_cpu_s']} s"
            print(
                f"from scratch, {name}: {r['generations_per_s']:,} generations/s{cpu}, rows digest {r['digest'][:16]}"
            )
        if scale:
            same = len({r["digest"] for r in scale.values()}) == 1
            print(f"digests {'identical' if same else 'DIFFER'}")
        print(f"load average before/after the builds: {load_before[0]:.2f} / {load_after[0]:.2f}")
        if "profile" in full:
            print("\ncProfile of the full build (by own time):\n" + full["profile"])

        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"pairs-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        record = {
            "started_at": started.isoformat(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "pg"},
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_avg_before": load_before,
                "load_avg_after": load_after,
            },
            "postgres": pg_info,
            "load_s": round(load_s, 1),
            "workload": work.kinds,
            "target_generations_per_s": TARGET,
            "builds": results,
            "scale_out": scale,
            "table": printed,
        }
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
        return 0
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        get_engine(url).dispose()
        if created and not args.keep_db:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        elif created:
            print(f"database kept: {url}")


if __name__ == "__main__":
    sys.exit(main())
