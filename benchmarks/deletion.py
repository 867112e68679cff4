#!/usr/bin/env python
"""Deletion benchmark: delete one user with many events while ingest keeps running, and measure both.

Creates a throw-away Postgres database, stores `--events` events (generation + edit pairs) of one user among
`--others` events of other users, builds their training rows and cuts a snapshot, starts `editloop serve` (a
subprocess), and drives POST /v1/events open-loop at `--rate` events/s in requests of `--batch` events. After
`--warmup` seconds of load alone, a deletion of that user runs in a separate process (what a worker does); the load
goes on until it ends. Reports the deletion's duration and steps, ingest latency (p50/p99/max) before and during
it, and checks that every event ingest acknowledged is stored and that nothing of the user is left.

Run:  .venv/bin/python benchmarks/deletion.py            (defaults: 100,000 events, 1,000 events/s)
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

WARMUP_S = 3.0
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_events(user: str, n_generations: int, start: datetime, tag: str) -> list[dict[str, Any]]:
    events = []
    for i in range(n_generations):
        gid = f"{tag}-{user}-{i}"
        at = start + timedelta(seconds=i)
        events.append(
            {
                "event_id": f"{gid}:gen",
                "type": "generation",
                "generation_id": gid,
                "occurred_at": at.isoformat(),
                "prompt": f"def scale_{i % 997}(values):\n    # {user} scales by {i}\n",
                "completion": f"    return [v * {i} for v in values]\n",
                "model": "base",
                "language": "python",
                "user": user,
                "session": f"{user}-{i // 50}",
                "metadata": {"ticket": f"{user}-{i}"},
            }
        )
        events.append(
            {
                "event_id": f"{gid}:edit",
                "type": "edited",
                "generation_id": gid,
                "occurred_at": (at + timedelta(seconds=20)).isoformat(),
                "final_text": f"    result = [value * {i} for value in values]\n    return result\n",
            }
        )
    return events


def seed(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from core.db import session_scope
    from core.projects import Role, create_key, create_project
    from core.settings import Settings
    from feedback.rows import build_rows
    from feedback.service import ingest
    from feedback.snapshots import cut_snapshot

    settings = Settings(ingest_fold="inline", max_events_per_batch=5000)
    with session_scope(url) as session:
        project = create_project(session, "bench")
        _, key = create_key(session, project, Role.ingest)
        project_id = project.id
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    started = time.perf_counter()
    target = user_events("target", args.events // 2, t0, "seed")
    rest: list[dict[str, Any]] = []
    for u in range(10):
        rest += user_events(f"other{u}", args.others // 20, t0, "seed")
    everything = target + rest
    for start in range(0, len(everything), 2000):
        with session_scope(url) as session:
            ingest(session, project_id, everything[start : start + 2000], settings)
    seeded = time.perf_counter() - started
    rows = snapshot = None
    if args.rows:
        with session_scope(url) as session:
            build = build_rows(session, project_id)
            rows = build.rows_added
        with session_scope(url) as session:
            snapshot = cut_snapshot(session, project_id).row_count
    return {
        "project_id": project_id,
        "key": key,
        "events": len(everything),
        "target_events": len(target),
        "seed_s": round(seeded, 1),
        "rows": rows,
        "snapshot_rows": snapshot,
    }


async def drive(port: int, key: str, args: argparse.Namespace, phase: dict[str, str], stop: asyncio.Event) -> dict:
    import httpx

    interval = args.batch / args.rate
    latencies: dict[str, list[float]] = {"warmup": [], "before": [], "during": [], "after": []}
    sent: dict[str, int] = dict.fromkeys(latencies, 0)
    failures: list[str] = []
    acknowledged: list[str] = []
    tasks: set[asyncio.Task] = set()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30
    ) as client:

        async def one(n: int) -> None:
            label = phase["now"]
            now = datetime.now(UTC)
            events = []
            for j in range(args.batch // 2):
                events += user_events(f"live{j % 7}", 1, now, f"load{n}-{j}")
            body = orjson.dumps({"events": events})
            began = time.perf_counter()
            try:
                r = await client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    return
                acknowledged.extend(e["event_id"] for e in events)
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                return
            finally:
                latencies[label].append((time.perf_counter() - began) * 1000)

        n = 0
        next_at = time.perf_counter()
        while not stop.is_set():
            sent[phase["now"]] += args.batch
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "sent": sent, "failures": failures, "acknowledged": acknowledged, "requests": n}


def summary(values: list[float], seconds: float, sent: int) -> dict[str, Any]:
    return {
        "requests": len(values),
        "events_sent_per_s": round(sent / seconds, 1) if seconds else None,
        "p50_ms": round(pct(values, 50), 2),
        "p99_ms": round(pct(values, 99), 2),
        "max_ms": round(max(values), 2) if values else None,
    }


async def run_load(url: str, port: int, seeded: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from core.db import session_scope
    from trainers import rights

    phase = {"now": "warmup"}
    stop = asyncio.Event()
    load = asyncio.create_task(drive(port, seeded["key"], args, phase, stop))
    await asyncio.sleep(WARMUP_S)  # connections opened, the server's first requests: not measured
    phase["now"] = "before"
    await asyncio.sleep(args.warmup)
    with session_scope(url) as session:
        request = rights.request_deletion(
            session, seeded["project_id"], {"user": "target"}, trigger="cli", actor="bench", address="local"
        )
        request_id = request.id
    phase["now"] = "during"
    started = time.perf_counter()
    code = f"from trainers import rights; print(rights.process({url!r}, {request_id}, pause_s={args.pause_ms / 1000}))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=str(REPO), stdout=asyncio.subprocess.PIPE, env={**os.environ}
    )
    out, _ = await proc.communicate()
    duration = time.perf_counter() - started
    phase["now"] = "after"
    await asyncio.sleep(2)
    stop.set()
    result = await load
    return {"request_id": request_id, "state": out.decode().strip(), "duration_s": duration, **result}


def check(url: str, project_id: int, request_id: int, acknowledged: list[str]) -> dict[str, Any]:
    from sqlalchemy import func, select

    from core.db import session_scope
    from feedback import fold
    from feedback.models import FeedbackEvent, Generation
    from feedback.rights_models import DeletionRequest

    with session_scope(url) as session:
        fold.settle(session, project_id)
    with session_scope(url) as session:
        stored = set(
            session.scalars(
                select(FeedbackEvent.event_id).where(
                    FeedbackEvent.project_id == project_id, FeedbackEvent.event_id.like("load%")
                )
            )
        )
        left = session.scalar(
            select(func.count()).where(Generation.project_id == project_id, Generation.user == "target")
        )
        request = session.get(DeletionRequest, request_id)
        counts, steps = dict(request.counts), request.steps
    missing = [e for e in acknowledged if e not in stored]
    return {
        "acknowledged": len(acknowledged),
        "missing": len(missing),
        "target_left": left,
        "removed": counts,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="Events of the user to delete.")
    parser.add_argument("--others", type=int, default=20_000, help="Events of other users, kept.")
    parser.add_argument("--rate", type=float, default=1000, help="Ingest load, events per second.")
    parser.add_argument("--batch", type=int, default=10, help="Events per request (even).")
    parser.add_argument("--warmup", type=float, default=20, help="Seconds of measured load before the deletion.")
    parser.add_argument("--pause-ms", type=float, default=0, help="The deletion's rest between steps.")
    parser.add_argument("--no-rows", dest="rows", action="store_false", help="Skip building rows and a snapshot.")
    parser.add_argument(
        "--admin", default=os.environ.get("EDITLOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--out", type=Path, default=None, help="Write the result as JSON here.")
    args = parser.parse_args(argv)

    import psycopg

    from core import migrate

    name = f"editloop_bench_del_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{args.admin.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    server = None
    try:
        migrate.upgrade(url)
        print(f"seeding {args.events} + {args.others} events ...", flush=True)
        seeded = seed(url, args)
        print(json.dumps(seeded | {"key": "..."}), flush=True)
        port = free_port()
        data_dir = Path(tempfile.mkdtemp(prefix="bench-del-"))
        env = {**os.environ, "EDITLOOP_DATABASE_URL": url, "EDITLOOP_DATA_DIR": str(data_dir)}
        server = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--no-background"], cwd=str(REPO), env=env
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.2)
        result = asyncio.run(run_load(url, port, seeded, args))
        verdict = check(url, seeded["project_id"], result["request_id"], result["acknowledged"])
        lat = result["latencies"]
        report = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "args": {k: str(v) for k, v in vars(args).items() if k != "admin"},
            "seed": seeded | {"key": None},
            "deletion": {"state": result["state"], "duration_s": round(result["duration_s"], 1), **verdict},
            "ingest_before": summary(lat["before"], args.warmup, result["sent"]["before"]),
            "ingest_during": summary(lat["during"], result["duration_s"], result["sent"]["during"]),
            "ingest_failures": result["failures"][:5],
            "ingest_failure_count": len(result["failures"]),
        }
        print(json.dumps(report, indent=2))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
        ok = result["state"] == "done" and verdict["missing"] == 0 and verdict["target_left"] == 0
        return 0 if ok and not result["failures"] else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        from core.db import get_engine

        get_engine(url).dispose()
        with psycopg.connect(args.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
