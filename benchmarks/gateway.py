#!/usr/bin/env python
"""Gateway overhead: the latency editloop adds on top of a project's upstream (the rented model).

In one run, against a fast local OpenAI-compatible server (benchmarks/fake_openai.py, fixed short completions
answered at once): the same requests sent directly to it and through editloop (`editloop serve`, `model:
"upstream"`, its generation recorded before the answer), for short completions streamed and not, at each offered
rate. Open loop: requests leave on a fixed timetable whatever the answers, over keep-alive connections, and latency
counts from the scheduled send time (no coordinated omission). For each, p50 / p99 of the full response (the last
byte of a stream) and errors; the added latency is editloop's percentile minus the direct one's.

Run:  .venv/bin/python benchmarks/gateway.py           (embedded SQLite; --database-url for Postgres; --help)"""

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"
KEY_ENV = "EDITLOOP_BENCH_UPSTREAM_KEY"
TARGET_P50_MS, TARGET_P99_MS = 3.0, 15.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_up(url: str, headers: dict[str, str], process: subprocess.Popen[bytes], limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: no answer within {limit_s}s")


class Conn:
    """One keep-alive HTTP/1.1 connection on raw sockets: Content-Length and chunked bodies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(data)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head[9:12])
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            end = head.index(b"\r\n", at + 2)
            body = await self.reader.readexactly(int(head[at + 17 : end]))
        else:  # chunked: to the last chunk
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(parts)
        if status == 200 and b'"error"' in body:
            status = 598  # a stream that ended with an error event
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Run:
    t_measure: float
    t_end: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, max(0, round(p / 100 * len(lat) + 0.5) - 1))] * 1e3 if lat else 0.0

        return {
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "max_ms": lat[-1] * 1e3 if lat else 0.0,
            "samples": len(lat),
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
        }


async def _worker(conn: Conn, data: bytes, run: Run, first: float, period: float) -> None:
    perf = time.perf_counter
    scheduled = first
    while scheduled < run.t_end:
        delay = scheduled - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        run.sent += 1
        try:
            async with asyncio.timeout(30):
                status = await conn.request(data)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
            run.errors[type(exc).__name__] = run.errors.get(type(exc).__name__, 0) + 1
            conn.close()
        else:
            if status != 200:
                run.errors[f"HTTP {status}"] = run.errors.get(f"HTTP {status}", 0) + 1
            elif scheduled >= run.t_measure:
                run.latencies.append(perf() - scheduled)
        scheduled += period


async def _drive(port: int, data: bytes, rate: float, conns: int, warmup: float, duration: float) -> Run:
    start = time.perf_counter() + 0.05
    run = Run(t_measure=start + warmup, t_end=start + warmup + duration)
    connections = [Conn(port) for _ in range(conns)]
    try:
        await asyncio.gather(
            *(_worker(c, data, run, start + i / rate, conns / rate) for i, c in enumerate(connections))
        )
    finally:
        for c in connections:
            c.close()
    return run


def drive(port: int, data: bytes, rate: float, conns: int, warmup: float, duration: float) -> Run:
    coro = _drive(port, data, rate, conns, warmup, duration)
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def request_bytes(port: int, key: str | None, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def setup(database_url: str, upstream_url: str) -> str:
    """A migrated database with one project whose upstream is the fast server; returns an ingest key."""
    from core import migrate
    from core.db import get_engine, session_scope
    from core.projects import Role, create_key, create_project

    migrate.upgrade(database_url)
    with session_scope(database_url) as session:
        project = create_project(session, f"bench-{os.getpid()}-{int(time.time())}")
        project.settings = {
            "upstream": {
                "url": upstream_url,
                "model": "fake",
                "api_key_env": KEY_ENV,
                "price_input_per_mtok": 3.0,
                "price_output_per_mtok": 15.0,
            }
        }
        _, key = create_key(session, project, Role.ingest)
    get_engine(database_url).dispose()
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The latency editloop adds on top of an upstream.")
    parser.add_argument("--rates", default="200,500", help="Offered requests/s, comma-separated.")
    parser.add_argument("--duration", type=float, default=10.0, help="Measured seconds per scenario.")
    parser.add_argument("--warmup", type=float, default=2.0, help="Unmeasured seconds before each.")
    parser.add_argument("--conns", type=int, default=64, help="Keep-alive connections of the load generator.")
    parser.add_argument(
        "--workers", type=int, help="Processes of `editloop serve`; default 2 on Postgres (one per core), 1 on SQLite."
    )
    parser.add_argument("--database-url", help="Postgres (migrated here); default: embedded SQLite in a temp dir.")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]

    data_dir = Path(tempfile.mkdtemp(prefix="editloop-bench-gateway-"))
    fake_port, gw_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    env.update(PYTHONPATH=str(REPO), EDITLOOP_DATA_DIR=str(data_dir), **{KEY_ENV: "bench-key"})
    if args.database_url:
        env["EDITLOOP_DATABASE_URL"] = args.database_url
    from core.settings import Settings

    database_url = Settings(data_dir=data_dir, database_url=args.database_url).sqlalchemy_url
    key = setup(database_url, f"http://{HOST}:{fake_port}/v1")
    fake = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "fake_openai.py"), "--port", str(fake_port)])
    serve = [sys.executable, "-m", "api.cli", "serve", "--port", str(gw_port), "--no-background"]
    args.workers = args.workers or (2 if args.database_url else 1)
    serve += ["--workers", str(args.workers)]
    gateway = subprocess.Popen(serve, env=env, cwd=data_dir, stdout=subprocess.DEVNULL)
    results: list[dict[str, Any]] = []
    try:
        wait_up(f"http://{HOST}:{fake_port}/v1/models", {}, fake)
        wait_up(f"http://{HOST}:{gw_port}/v1/models", {"Authorization": f"Bearer {key}"}, gateway)
        for stream in (False, True):
            body = {"model": "upstream", "prompt": "def add(a, b):\n", "max_tokens": 8, "stream": stream}
            direct = request_bytes(fake_port, None, {**body, "model": "fake"})
            through = request_bytes(gw_port, key, body)
            for rate in rates:
                row: dict[str, Any] = {"stream": stream, "rate": rate}
                row["direct"] = drive(fake_port, direct, rate, args.conns, args.warmup, args.duration).summary()
                row["editloop"] = drive(gw_port, through, rate, args.conns, args.warmup, args.duration).summary()
                row["added_p50_ms"] = row["editloop"]["p50_ms"] - row["direct"]["p50_ms"]
                row["added_p99_ms"] = row["editloop"]["p99_ms"] - row["direct"]["p99_ms"]
                results.append(row)
                print(_line(row), flush=True)
    finally:
        for process in (gateway, fake):
            process.terminate()
            process.wait(10)
    passed = all(
        r["added_p50_ms"] <= TARGET_P50_MS
        and r["added_p99_ms"] <= TARGET_P99_MS
        and r["editloop"]["errors"] + r["direct"]["errors"] == 0
        for r in results
    )
    print(
        f"targets (added p50 <= {TARGET_P50_MS} ms, added p99 <= {TARGET_P99_MS} ms, 0 errors): "
        f"{'met' if passed else 'NOT met'}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"gateway-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    meta = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "database": "postgres" if args.database_url else "sqlite",
        "workers": args.workers,
    }
    out.write_text(
        json.dumps({"meta": meta, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
    )
    print(f"wrote {out}")
    return 0 if passed else 1


def _line(row: dict[str, Any]) -> str:
    d, e = row["direct"], row["editloop"]
    kind = "streamed" if row["stream"] else "non-streamed"
    return (
        f"{kind:>12} @ {row['rate']:.0f}/s  direct p50 {d['p50_ms']:.2f} p99 {d['p99_ms']:.2f} ms ({d['errors']} err)"
        f"  editloop p50 {e['p50_ms']:.2f} p99 {e['p99_ms']:.2f} ms ({e['errors']} err)"
        f"  added p50 {row['added_p50_ms']:+.2f} p99 {row['added_p99_ms']:+.2f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
