#!/usr/bin/env python
"""Ingest benchmark: how fast does the collector take feedback events, next to what the machine allows?

Creates a throw-away Postgres database, starts `editloop serve` as deployed (uvicorn, N workers, a
subprocess), drives it over HTTP/1.1 keep-alive from a small asyncio client on raw sockets, and measures
against two baselines taken in the same run: a raw `COPY` of the same rows into `feedback_events` (the
database's ceiling), and a no-database FastAPI endpoint served by the same uvicorn (the framework's
ceiling). See benchmarks/README.md.

Run:  .venv/bin/python benchmarks/ingest.py            (about 2 minutes with the defaults)
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"  # all load stays on loopback
TOKEN = b"ZQXJRQIDZQ"  # replaced in pre-serialized requests by a unique 10-character id
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ----------------------------------------------------------------------------------------------------
# The no-database endpoint: the framework's ceiling. uvicorn's workers import it as `ingest:create_nodb_app`.


def create_nodb_app() -> Any:
    """Minimal FastAPI app: read the body, parse it with orjson, answer a small JSON. No auth, no database."""
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/events")
    async def post_events(request: Request) -> dict[str, Any]:
        body = orjson.loads(await request.body())
        n = len(body["events"])
        return {"received": n, "stored": n, "duplicates": 0, "errors": [], "secrets_redacted": {}}

    return app


def serve_nodb(port: int, workers: int) -> None:
    import uvicorn

    # The same uvicorn.run call as `editloop serve` (api/cli.py), on the minimal app.
    uvicorn.run(
        "ingest:create_nodb_app",
        factory=True,
        host=HOST,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
        app_dir=str(HERE),
    )


# ----------------------------------------------------------------------------------------------------
# Realistic events: 1-2 KB of Python code per generation; half are feedback (accepted / edited) on them.

_HEADER = '''"""Utilities for the {name} pipeline."""


import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
'''

_SNIPPETS = [
    """
@dataclass
class {Name}Config:
    root: Path
    batch_size: int = 64
    retries: int = 3
    tags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {{self.batch_size}}")
        if not self.root.exists():
            raise FileNotFoundError(self.root)
""",
    """
def load_{name}_records(path: Path, limit: int | None = None) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                log.warning("skipping line %d of %s: %s", lineno, path, exc)
            if limit is not None and len(records) >= limit:
                break
    return records
""",
    '''
def chunked_{name}(items: list, size: int):
    """Yield successive chunks of `size` items; the last one may be shorter."""
    if size <= 0:
        raise ValueError("size must be positive")
    for start in range(0, len(items), size):
        yield items[start : start + size]
''',
    """
class {Name}Cache:
    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._data: dict[str, object] = {{}}
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> object | None:
        if key in self._data:
            self.hits += 1
            value = self._data.pop(key)
            self._data[key] = value
            return value
        self.misses += 1
        return None
""",
    """
def summarize_{name}(values: list[float]) -> dict[str, float]:
    if not values:
        return {{"count": 0, "mean": 0.0, "min": 0.0, "max": 0.0}}
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {{"count": len(ordered), "mean": mean, "median": median, "min": ordered[0], "max": ordered[-1]}}
""",
    """
def merge_{name}_settings(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_{name}_settings(merged[key], value)
        else:
            merged[key] = value
    return merged
""",
]

_COMPLETIONS = [
    """    results = []
    for batch in chunked(items, config.batch_size):
        for attempt in range(config.retries):
            try:
                results.extend(process(batch))
                break
            except TimeoutError:
                log.info("batch of %d timed out (attempt %d)", len(batch), attempt + 1)
        else:
            raise RuntimeError("giving up after %d attempts" % config.retries)
    return results
""",
    """    seen: set[str] = set()
    unique = []
    for record in records:
        key = record.get("id") or json.dumps(record, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        unique.append(record)
    log.debug("kept %d of %d records", len(unique), len(records))
    return unique
""",
    """    output = Path(target).with_suffix(".json")
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": 2, "items": [item.to_dict() for item in items], "count": len(items)}
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    tmp.replace(output)
    return output
""",
    """    totals: dict[str, int] = {}
    for entry in entries:
        bucket = entry["category"].lower().strip()
        totals[bucket] = totals.get(bucket, 0) + int(entry.get("amount", 0))
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked[:top] if top else ranked
""",
]

_SIGNATURES = [
    "\n\ndef run_{name}(items: list, config: {Name}Config, process) -> list:\n",
    "\n\ndef dedupe_{name}(records: list[dict]) -> list[dict]:\n",
    "\n\ndef export_{name}(items: list, target: str) -> Path:\n",
    "\n\ndef rank_{name}(entries: list[dict], top: int = 10) -> list[tuple[str, int]]:\n",
]

_NAMES = [
    "orders",
    "billing",
    "search",
    "metrics",
    "ingest",
    "reports",
    "sessions",
    "catalog",
    "alerts",
    "users",
    "inventory",
    "payments",
    "shipping",
    "ratings",
    "exports",
    "imports",
]


def _code(variant: int) -> tuple[str, str, str]:
    """(prompt, completion, edited completion) of one variant: 0.6-1.3 KB of prompt, 0.3-0.5 KB of code."""
    name = _NAMES[variant % len(_NAMES)]
    fmt = {"name": name, "Name": name.capitalize()}
    k = len(_SNIPPETS)
    picked = [_SNIPPETS[(variant + i * 2) % k] for i in range(1 + variant % 3)]
    prompt = _HEADER.format(**fmt) + "".join(s.format(**fmt) for s in picked)
    prompt += _SIGNATURES[variant % len(_SIGNATURES)].format(**fmt)
    completion = _COMPLETIONS[variant % len(_COMPLETIONS)]
    lines = completion.splitlines(keepends=True)
    edited = "".join(lines[:-1]) + f'    log.info("{name}: done")\n' + lines[-1]
    return prompt, completion, edited


def _times() -> tuple[str, str]:
    base = datetime.now(UTC) - timedelta(minutes=5)
    return base.isoformat(), (base + timedelta(seconds=3)).isoformat()


def generation_event(tag: str, variant: int, at: str) -> dict[str, Any]:
    prompt, completion, _ = _code(variant)
    return {
        "event_id": f"{tag}:gen",
        "type": "generation",
        "generation_id": tag,
        "occurred_at": at,
        "prompt": prompt,
        "completion": completion,
        "model": "acme-coder-7b-lora-0007",
        "language": "python",
        "file_path": f"src/{_NAMES[variant % len(_NAMES)]}/pipeline.py",
        "user": f"user-{variant % 97}",
        "session": f"sess-{variant % 13}",
        "latency_ms": 180.0 + variant,
        "metadata": {"ide": "vscode", "plugin_version": "1.4.2", "trigger": "inline"},
    }


def feedback_event(tag: str, variant: int, at: str) -> dict[str, Any]:
    if variant % 2 == 0:
        return {"event_id": f"{tag}:accepted", "type": "accepted", "generation_id": tag, "occurred_at": at}
    _, _, edited = _code(variant)
    return {
        "event_id": f"{tag}:edited",
        "type": "edited",
        "generation_id": tag,
        "occurred_at": at,
        "final_text": edited,
    }


def batch_events(tid: str, size: int, variant: int, t_gen: str, t_fb: str) -> list[dict[str, Any]]:
    """`size` events: size/2 generations and one feedback event for each (accepted or edited, alternating)."""
    gens = (size + 1) // 2
    events = []
    for j in range(gens):
        tag = f"{tid}-{j:04d}"
        events.append(generation_event(tag, variant + j, t_gen))
        if len(events) + (gens - j - 1) < size:
            events.append(feedback_event(tag, variant + j, t_fb))
    return events[:size]


def request_bytes(path: str, port: int, key: str | None, body: bytes) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Workload:
    """Pre-serialized requests with a placeholder id; each send puts in a fresh id, so every event is new."""

    def __init__(self, port: int, key: str | None, batch_size: int, variants: int = 16) -> None:
        self._ids = itertools.count(1)
        self.prefix = uuid.uuid4().hex[:2]  # ids stay unique across runs against the same database
        t_gen, t_fb = _times()
        tid = TOKEN.decode()
        self.batch_size = batch_size
        self.batches = [
            request_bytes(
                "/v1/events",
                port,
                key,
                orjson.dumps({"events": batch_events(tid, batch_size, v * 7, t_gen, t_fb)}),
            )
            for v in range(variants)
        ]
        self.singles = [
            (
                request_bytes("/v1/events", port, key, orjson.dumps({"events": [generation_event(tid, v, t_gen)]})),
                request_bytes("/v1/events", port, key, orjson.dumps({"events": [feedback_event(tid, v, t_fb)]})),
            )
            for v in range(variants)
        ]

    def fresh_id(self) -> bytes:
        return b"%s%08x" % (self.prefix.encode(), next(self._ids))

    def batch(self) -> bytes:
        i = self.fresh_id()
        return self.batches[int(i[-4:], 16) % len(self.batches)].replace(TOKEN, i)

    def single_stream(self) -> Iterator[bytes]:
        """A generation, then its feedback, then the next generation... (one event per request)."""
        while True:
            i = self.fresh_id()
            gen, fb = self.singles[int(i[-4:], 16) % len(self.singles)]
            yield gen.replace(TOKEN, i)
            yield fb.replace(TOKEN, i)

    def body_sizes(self) -> dict[str, int]:
        def body(req: bytes) -> int:
            return len(req) - req.index(b"\r\n\r\n") - 4

        return {
            "batch_body_bytes": body(self.batches[0]),
            "single_generation_body_bytes": body(self.singles[0][0]),
            "single_feedback_body_bytes": body(self.singles[1][1]),
        }


# ----------------------------------------------------------------------------------------------------
# Load generator: asyncio, HTTP/1.1 keep-alive, one request in flight per connection.


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError("response without Content-Length")
        end = lower.index(b"\r\n", at + 2)
        body = await self.reader.readexactly(int(lower[at + 17 : end]))
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Run:
    """What one scenario measured. Throughput counts responses that completed inside the measurement window;
    latency counts requests sent (or, open loop, scheduled) inside it."""

    name: str
    t_measure: float
    t_end: float
    latencies: list[float] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)
    requests_in_window: int = 0
    events_in_window: int = 0
    requests_total: int = 0
    ok_total: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    stored: int = 0
    duplicates: int = 0
    rejected_events: int = 0
    secrets_redacted: int = 0
    cpu: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    def record(self, t_ref: float, t_done: float, status: int, body: bytes) -> None:
        self.requests_total += 1
        if not 200 <= status < 300:
            self.errors += 1
            self.error_kinds[f"HTTP {status}"] += 1
            return
        self.ok_total += 1
        res = orjson.loads(body)
        stored, dups = res["stored"], res["duplicates"]
        self.stored += stored
        self.duplicates += dups
        self.rejected_events += len(res["errors"])
        self.secrets_redacted += sum(res["secrets_redacted"].values())
        if self.t_measure <= t_ref < self.t_end:
            self.latencies.append(t_done - t_ref)
        if self.t_measure <= t_done <= self.t_end:
            self.requests_in_window += 1
            self.events_in_window += stored + dups

    def failed(self, exc: BaseException) -> None:
        self.requests_total += 1
        self.errors += 1
        self.error_kinds[type(exc).__name__] += 1

    def summary(self) -> dict[str, Any]:
        window = self.t_end - self.t_measure
        lat = sorted(self.latencies)
        lag = sorted(self.send_lag)
        return {
            "events_per_s": self.events_in_window / window,
            "requests_per_s": self.requests_in_window / window,
            "p50_ms": pct(lat, 50) * 1e3,
            "p99_ms": pct(lat, 99) * 1e3,
            "max_ms": (lat[-1] if lat else 0.0) * 1e3,
            "latency_samples": len(lat),
            "send_lag_p99_ms": pct(lag, 99) * 1e3 if lag else None,
            "window_s": window,
            "requests_total": self.requests_total,
            "ok_total": self.ok_total,
            "errors": self.errors,
            "non_2xx": sum(n for kind, n in self.error_kinds.items() if kind.startswith("HTTP")),
            "error_kinds": dict(self.error_kinds),
            "stored": self.stored,
            "duplicates": self.duplicates,
            "rejected_events": self.rejected_events,
            "secrets_redacted": self.secrets_redacted,
        }


def pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


async def _closed_worker(conn: Conn, next_request: Callable[[], bytes], run: Run, timeout: float) -> None:
    perf = time.perf_counter
    while perf() < run.t_end:
        data = next_request()
        t0 = perf()
        try:
            async with asyncio.timeout(timeout):
                status, body = await conn.request(data)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ) as exc:
            run.failed(exc)
            conn.close()
            await asyncio.sleep(0.05)
            continue
        run.record(t0, perf(), status, body)


async def _open_worker(
    conn: Conn, next_request: Callable[[], bytes], run: Run, first: float, period: float, timeout: float
) -> None:
    """Sends on a fixed timetable whatever the responses; latency counts from the scheduled time, so a slow
    response that delays the next send is charged to that request too (no coordinated omission)."""
    perf = time.perf_counter
    scheduled = first
    while scheduled < run.t_end:
        delay = scheduled - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        data = next_request()
        sent = perf()
        if run.t_measure <= scheduled:
            run.send_lag.append(max(0.0, sent - scheduled))
        try:
            async with asyncio.timeout(timeout):
                status, body = await conn.request(data)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ) as exc:
            run.failed(exc)
            conn.close()
        else:
            run.record(scheduled, perf(), status, body)
        scheduled += period


async def _drive(
    name: str,
    port: int,
    conns: int,
    warmup: float,
    duration: float,
    factory: Callable[[], Any],
    rate: float | None,
    timeout: float,
    snapshot: Callable[[], dict[str, Any]] | None,
) -> Run:
    start = time.perf_counter() + 0.05
    run = Run(name, t_measure=start + warmup, t_end=start + warmup + duration)
    connections = [Conn(port) for _ in range(conns)]
    tasks = []
    for i, conn in enumerate(connections):
        nxt = factory()
        if rate is None:
            tasks.append(_closed_worker(conn, nxt, run, timeout))
        else:  # each connection owns every conns-th slot of the timetable
            period = conns / rate
            tasks.append(_open_worker(conn, nxt, run, start + i / rate, period, timeout))
    if snapshot is not None:
        tasks.append(_watch_cpu(run, snapshot))
    # Ctrl-C / SIGTERM: cancel the load cleanly, then let drive() raise KeyboardInterrupt outside the loop.
    loop, me = asyncio.get_running_loop(), asyncio.current_task()
    assert me is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, me.cancel)
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        run.interrupted = True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for conn in connections:
            conn.close()
    return run


async def _watch_cpu(run: Run, snapshot: Callable[[], dict[str, Any]]) -> None:
    """CPU snapshots at the edges of the measurement window, taken off the event loop."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, run.t_measure - time.perf_counter()))
    run.cpu.append(await loop.run_in_executor(None, snapshot))
    await asyncio.sleep(max(0.0, run.t_end - time.perf_counter()))
    run.cpu.append(await loop.run_in_executor(None, snapshot))


def drive(
    name: str,
    port: int,
    conns: int,
    warmup: float,
    duration: float,
    factory: Callable[[], Any],
    rate: float | None = None,
    timeout: float = 30.0,
    snapshot: Callable[[], dict[str, Any]] | None = None,
) -> Run:
    coro = _drive(name, port, conns, warmup, duration, factory, rate, timeout, snapshot)
    try:
        import uvloop

        run = uvloop.run(coro)
    except ImportError:
        run = asyncio.run(coro)
    if run.interrupted:
        raise KeyboardInterrupt
    return run


# ----------------------------------------------------------------------------------------------------
# CPU accounting from /proc: who used the 2 cores during a scenario (server, Postgres, this client, the rest).


def _stat(pid: int) -> tuple[int, int, int, int] | None:
    """(ppid, utime+stime, cutime+cstime) in ticks."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = raw[raw.rindex(b")") + 2 :].split()
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14]), pid


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Cpu:
    """Snapshots of CPU ticks: the server's process tree, Postgres (live backends of our database, the shared
    background processes, and backends that exited in the window), this process, and the whole machine.
    Live backends of other databases count as `other`."""

    def __init__(self, server_pid: int | None, dbname: str) -> None:
        self.server_pid, self.dbname = server_pid, dbname

    def snapshot(self) -> dict[str, Any]:
        tree = descendants(self.server_pid) if self.server_pid else []
        per_process = {p: (_stat(p) or (0, 0, 0, 0))[1] for p in tree if p != self.server_pid}
        server = sum((_stat(p) or (0, 0, 0, 0))[1] for p in tree)
        pg = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or _comm(int(entry)) != "postgres":
                continue
            pid = int(entry)
            st = _stat(pid)
            if st is None:
                continue
            cmd = _cmdline(pid)
            # Backends of other databases ("... user db host(port) state") are someone else's load.
            if self.dbname in cmd or ("(" not in cmd and "[local]" not in cmd):
                pg += st[1]
            if _comm(st[0]) != "postgres":  # the postmaster: backends that exited (connection churn) count here
                pg += st[2]
        me = _stat(os.getpid())
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        busy = sum(parts[:8]) - parts[3] - parts[4]  # user..steal less idle and iowait (guest is in user)
        irq = parts[5] + parts[6] + parts[7]  # interrupts and softirqs (loopback TCP lands here), VM steal
        return {
            "t": time.perf_counter(),
            "server": server,
            "postgres": pg,
            "client": me[1] if me else 0,
            "machine": busy,
            "irq": irq,
            "workers": per_process,
        }

    @staticmethod
    def cores(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Cores used between two snapshots; `workers` splits the server's by process (uvicorn workers)."""
        wall = b["t"] - a["t"]
        c: dict[str, Any] = {
            k: round(max(0.0, (b[k] - a[k]) / CLK_TCK / wall), 2)
            for k in ("server", "postgres", "client", "irq", "machine")
        }
        c["other"] = round(max(0.0, c["machine"] - c["server"] - c["postgres"] - c["client"] - c["irq"]), 2)
        c["workers"] = sorted(
            (round((t - a["workers"].get(p, t)) / CLK_TCK / wall, 2) for p, t in b["workers"].items()), reverse=True
        )
        return c


# ----------------------------------------------------------------------------------------------------
# Servers and the database.


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess in its own process group, so that stopping it stops its uvicorn workers too."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, logdir: Path) -> None:
        self.name, self.port = name, port
        self.log = logdir / f"{name}.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} server not healthy after {timeout}s:\n{self.tail()}")

    def workers(self) -> list[int]:
        return [
            p
            for p in descendants(self.proc.pid)
            if p != self.proc.pid and "multiprocessing" in _cmdline(p) and "resource_tracker" not in _cmdline(p)
        ]

    def tail(self, n: int = 40) -> str:
        if not self._log.closed:
            self._log.flush()
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # workers left behind (should be none): same process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def start_py_spy(pid: int, seconds: float, args: argparse.Namespace, key: str) -> tuple[Any, Path]:
    """Sample the server's workers with py-spy while a scenario runs: only the thread holding the GIL (--gil),
    so the samples say where the workers' Python CPU goes. Collapsed stacks, one file per scenario."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = args.results_dir / f"ingest-{args.stamp}-{key}.pyspy.txt"
    argv = [exe, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking", "--rate", "100"]
    argv += ["--duration", str(max(1, int(seconds))), "--format", "raw", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def finish_py_spy(proc: Any, out: Path) -> dict[str, Any]:
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not out.exists():
        return {"error": f"py-spy failed (exit {proc.returncode}); is it installed, may it ptrace?"}
    return {"file": str(out), "share": profile_shares(out)}


# Where a sample's time goes: the first rule (in this order) that matches any frame of its stack.
PROFILE_RULES = [
    ("scrub_text (feedback/scrub/)", ("feedback/scrub/",)),
    ("join merge/derive (feedback/join.py)", ("feedback/join.py",)),
    ("validation (parse_event, pydantic)", ("parse_event (",)),
    ("payload model_dump", ("model_dump",)),
    ("connection pool (checkout, pre-ping)", ("sqlalchemy/pool/",)),
    ("psycopg (adapt params, send, read)", ("psycopg/",)),
    ("SQLAlchemy (build, compile, execute, ORM)", ("sqlalchemy/",)),
    ("service.ingest own code", ("feedback/service.py",)),
    ("read body + orjson (api/body.py)", ("api/body.py",)),
    ("uvicorn's response writes (socket)", ("RequestResponseCycle.send (",)),
    ("thread hops, tenacity, rest of group commit", ("anyio/", "tenacity/", "starlette/concurr", "concurrent/")),
    ("direct entrance (api/routes/events.py, api/deps.py)", ("api/routes/events.py", "api/deps.py")),
    ("FastAPI/Starlette (routing, deps, response)", ("fastapi/", "starlette/", "pydantic/")),
    ("uvicorn + event loop", ("uvicorn/", "asyncio/", "httptools", "uvloop")),
]


def profile_shares(path: Path) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        name = next((r for r, needles in PROFILE_RULES if any(x in stack for x in needles)), "other")
        counts[name] += int(n)
    total = sum(counts.values()) or 1
    return {k: round(v / total, 4) for k, v in counts.most_common()}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the server's code differed from it (uncommitted edits outside benchmarks/)."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("benchmarks/")]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "dirty": dirty}


def db_counters(admin: str, dbname: str) -> dict[str, int]:
    """Cumulative sessions opened and commits of our database (pg_stat_database, flushed about once a second)."""
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions, xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return {"sessions_opened": int(row[0]), "commits": int(row[1])} if row else {"sessions_opened": 0, "commits": 0}


def analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE feedback_events, generations")


def fold_drain(url: str, limit_s: float = 300.0) -> dict[str, Any]:
    """Wait until the server has folded everything queued (feedback/fold.py); how much there was, and how long."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT g) FROM fold_queue, jsonb_array_elements_text(generation_ids) AS g"
        ).fetchone()
        assert row is not None
        queued, generations = row
        left = queued
        while left and time.perf_counter() - t0 < limit_s:
            time.sleep(0.05)
            left = conn.execute("SELECT count(*) FROM fold_queue").fetchone()[0]  # type: ignore[index]
    return {
        "queued_at_end": queued,
        "generations_at_end": generations,
        "drain_s": time.perf_counter() - t0 if queued else 0.0,
        "left_after_limit": left,
    }


def pg_url(admin: str, dbname: str) -> str:
    return f"{admin.rsplit('/', 1)[0]}/{dbname}"


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


# ----------------------------------------------------------------------------------------------------
# Baseline: raw COPY of the same rows into feedback_events.

COPY_SQL = (
    "COPY feedback_events (project_id, event_id, type, generation_id, occurred_at, received_at, payload) FROM STDIN"
)
_COMMON = ("event_id", "type", "generation_id", "occurred_at")


def copy_rows(project_id: int, prefix: str, n: int, batch_size: int) -> Iterator[tuple[Any, ...]]:
    """The rows the server writes for the batch workload: same columns, payload = the event less its common
    fields (what `service.ingest` stores for code without secrets), serialized to JSON once per template."""
    t_gen, t_fb = _times()
    received = datetime.now(UTC).isoformat()
    templates = []
    for v in range(16):
        for ev in batch_events(TOKEN.decode(), batch_size, v * 7, t_gen, t_fb):
            payload = orjson.dumps({k: val for k, val in ev.items() if k not in _COMMON}).decode()
            templates.append((ev["event_id"], ev["type"], ev["generation_id"], ev["occurred_at"], payload))
    tok = TOKEN.decode()
    for i in range(n):
        eid, typ, gid, occurred, payload = templates[i % len(templates)]
        rid = f"{prefix}{i // batch_size:08x}"
        yield (project_id, eid.replace(tok, rid), typ, gid.replace(tok, rid), occurred, received, payload)


def copy_baseline(url: str, project_id: int, n: int, chunk: int | None, batch_size: int, cpu: Cpu) -> dict[str, Any]:
    """COPY n rows, `chunk` rows per transaction (None: all in one); rows are built before timing."""
    import psycopg

    rows = list(copy_rows(project_id, uuid.uuid4().hex[:2] + ("c" if chunk else "b"), n, batch_size))
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        before = cpu.snapshot()  # with the backend up, so that its CPU time is seen
        t0 = time.perf_counter()
        step = chunk or n
        for start in range(0, n, step):
            with cur.copy(COPY_SQL) as copy:
                for row in rows[start : start + step]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
        cores = Cpu.cores(before, cpu.snapshot())
    return {
        "rows": n,
        "rows_per_txn": step,
        "seconds": elapsed,
        "rows_per_s": n / elapsed,
        "cpu_cores": cores,
    }


# ----------------------------------------------------------------------------------------------------
# The benchmark.


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Benchmark POST /v1/events of `editloop serve` on Postgres against a raw COPY and a "
        "no-database endpoint, in one run. Creates and drops its own database.",
        epilog="Targets checked: batches >= 20,000 events/s; single events >= 2,000 events/s; "
        "p99 <= 25 ms at 1,000 events/s offered. JSON results: benchmarks/results/ingest-<timestamp>.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--pg",
        default=os.environ.get("EDITLOOP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="admin URL of the Postgres server (a database is created there and dropped at the end)",
    )
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each scenario")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (both servers)")
    p.add_argument("--batch-size", type=int, default=100, help="events per request in the batch scenario")
    p.add_argument("--batch-conns", type=int, default=8, help="concurrent connections, batch scenario")
    p.add_argument("--single-conns", type=int, default=32, help="concurrent connections, single-event scenario")
    p.add_argument("--rate", type=float, default=1000.0, help="offered events/s in the fixed-rate scenario")
    p.add_argument("--rate-conns", type=int, default=32, help="connections sharing the fixed-rate timetable")
    p.add_argument("--copy-rows", type=int, default=50_000, help="rows per COPY baseline (chunked and one big)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    p.add_argument(
        "--ingest-fold",
        choices=("deferred", "inline"),
        default="deferred",
        help="EDITLOOP_INGEST_FOLD of the server: fold events into generations after the commit (the default) or in"
        " the ingest transaction",
    )
    p.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default={"batches", "singles", "rate"},
        metavar="LIST",
        help="comma-separated scenarios of ours to run: batches, singles, rate (default: all)",
    )
    p.add_argument("--skip-nodb", action="store_true", help="skip the no-database endpoint baseline")
    p.add_argument("--skip-copy", action="store_true", help="skip the COPY baseline")
    p.add_argument("--keep-db", action="store_true", help="do not drop the database at the end (prints its URL)")
    p.add_argument(
        "--fresh-stats",
        action="store_true",
        help="skip the prefill + ANALYZE between scenarios: measure a just-created database whose planner "
        "statistics are stale (as right after a deploy, or for a new project in a big table)",
    )
    p.add_argument("--results-dir", type=Path, default=HERE / "results", help="where the JSON results go")
    p.add_argument(
        "--py-spy",
        action="store_true",
        help="profile the server's workers with py-spy (pip install py-spy) during each of its scenarios; "
        "collapsed stacks go next to the JSON results (sampling costs some CPU: figures drop a little)",
    )
    p.add_argument("--serve-nodb", type=int, metavar="PORT", help=argparse.SUPPRESS)  # internal: nodb server
    args = p.parse_args(argv)

    if args.serve_nodb:
        serve_nodb(args.serve_nodb, args.workers)
        return 0

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 175)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    dbname = f"editloop_bench_{uuid.uuid4().hex[:10]}"
    url = pg_url(args.pg, dbname)
    servers: list[Server] = []
    created = False
    logdir = Path(tempfile.mkdtemp(prefix="editloop-bench-"))
    started = datetime.now(UTC)
    args.stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    try:
        import psycopg

        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
            created = True
            pg_info = {
                k: conn.execute(f"SHOW {k}").fetchone()[0]  # type: ignore[index]
                for k in ("server_version", "synchronous_commit", "fsync", "shared_buffers", "wal_level")
            }
        result = bench(args, console, url, dbname, servers, logdir, pg_info)
        result["started_at"] = started.isoformat()
        out = args.results_dir / f"ingest-{args.stamp}.json"
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"results: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
        shutil.rmtree(logdir, ignore_errors=True)  # the servers' logs, kept when something failed
        return 0 if result["correctness"]["ok"] else 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: cleaning up[/yellow]")
        return 130
    finally:
        for s in servers:
            s.stop()
        if logdir.exists():
            console.print(f"server logs: {logdir}")
        if created and not args.keep_db:
            import psycopg

            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        elif created:
            console.print(f"database kept: {url}")


def bench(
    args: argparse.Namespace,
    console: Any,
    url: str,
    dbname: str,
    servers: list[Server],
    logdir: Path,
    pg_info: dict[str, str],
) -> dict[str, Any]:
    import psycopg

    from core import migrate
    from core.db import session_scope
    from core.projects import Role, create_key, create_project

    say = console.print
    sa_url = sqlalchemy_url(url)
    migrate.upgrade(sa_url)
    with session_scope(sa_url) as session:
        project = create_project(session, "bench")
        _, key = create_key(session, project, Role.ingest)
        copy_project = create_project(session, "bench-copy")
        project_id, copy_project_id = project.id, copy_project.id

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITLOOP_")}
    env.update(EDITLOOP_DATABASE_URL=url, EDITLOOP_INGEST_FOLD=args.ingest_fold, PYTHONUNBUFFERED="1")
    w, d = args.warmup, args.duration
    runs: dict[str, dict[str, Any]] = {}

    def scenario(
        label: str,
        key_: str,
        server: Server,
        cpu: Cpu,
        conns: int,
        factory: Callable[[], Any],
        rate: float | None = None,
    ) -> None:
        say(f"  {label}: {conns} connections, {w:g}s warm-up + {d:g}s ...")
        spy = start_py_spy(server.proc.pid, w + d, args, key_) if args.py_spy and server.name == "editloop" else None
        db0 = db_counters(args.pg, dbname)
        run = drive(label, server.port, conns, w, d, factory, rate, args.timeout, cpu.snapshot)
        drained = fold_drain(url) if server.name == "editloop" else None
        db1 = db_counters(args.pg, dbname)
        s = run.summary()
        s.update(label=label, connections=conns, offered_events_per_s=rate, cpu_cores=Cpu.cores(*run.cpu))
        if drained is not None:
            # Deferred folding: what was acknowledged but not yet folded when the load stopped, and how long the
            # server took to fold it. The sustained rate charges that time to the scenario: events/s that the
            # collector takes AND folds, if the load went on.
            s["fold"] = drained
            s["sustained_events_per_s"] = s["events_per_s"] * d / (d + drained["drain_s"])
        # Whole scenario (warm-up included): Postgres sessions opened (connection churn) and commits, per second.
        s["db_per_s"] = {k: round((db1[k] - db0[k]) / (w + d), 1) for k in db0}
        if spy is not None:
            s["py_spy"] = finish_py_spy(*spy)
        runs[key_] = s
        _stored_total[server.name] = _stored_total.get(server.name, 0) + run.stored
        _dups_total[server.name] = _dups_total.get(server.name, 0) + run.duplicates
        if drained is not None:
            say(
                f"    fold: {drained['queued_at_end']:,} queue rows ({drained['generations_at_end']:,} generations)"
                f" left when the load stopped, folded in {drained['drain_s']:.2f} s; sustained"
                f" {s['sustained_events_per_s']:,.0f} events/s"
            )
        say(
            f"    {s['events_per_s']:,.0f} events/s, {s['requests_per_s']:,.0f} req/s, "
            f"non-2xx {s['non_2xx']}, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, errors {s['errors']}, "
            f"cpu {s['cpu_cores']}, "
            f"db/s {s['db_per_s']}"
        )

    _stored_total: dict[str, int] = {}
    _dups_total: dict[str, int] = {}

    # 1. The collector as deployed.
    port = free_port()
    say(
        f"[bold]editloop serve[/bold] on :{port}, {args.workers} workers, database {dbname},"
        f" ingest fold {args.ingest_fold}"
    )
    ours = Server(
        "editloop",
        [
            sys.executable,
            "-m",
            "api.cli",
            "serve",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],
        env,
        port,
        logdir,
    )
    servers.append(ours)
    ours.wait_healthy()
    load = Workload(port, key, args.batch_size)
    cpu = Cpu(ours.proc.pid, dbname)
    if not args.fresh_stats:
        # A live deployment has planner statistics; a database created a second ago has none, and then the
        # generations lookup scans the project's rows instead of probing the unique index. Load some data and
        # ANALYZE first, and again between scenarios (autovacuum's job in production). --fresh-stats skips this.
        say(f"  prefill: batches for {max(w, 3):g}s, then ANALYZE ...")
        pre = drive("prefill", port, args.batch_conns, 0, max(w, 3), lambda: load.batch, None, args.timeout)
        _stored_total["editloop"] = pre.stored
        _dups_total["editloop"] = pre.duplicates
        prefill = pre.summary()
        analyze(url)
    else:
        prefill = None
    if "batches" in args.only:
        scenario("ours: batches", "ours_batches", ours, cpu, args.batch_conns, lambda: load.batch)
        if not args.fresh_stats:
            analyze(url)
    if "singles" in args.only:
        scenario(
            "ours: single events",
            "ours_singles",
            ours,
            cpu,
            args.single_conns,
            lambda: load.single_stream().__next__,
        )
        if not args.fresh_stats:
            analyze(url)
    if "rate" in args.only:
        scenario(
            f"ours: singles @ {args.rate:,.0f}/s",
            "ours_fixed_rate",
            ours,
            cpu,
            args.rate_conns,
            lambda: load.single_stream().__next__,
            rate=args.rate,
        )
    ours.stop()
    servers.remove(ours)

    # 2. The framework's ceiling: same uvicorn, same workers, no database.
    if not args.skip_nodb:
        port = free_port()
        say(f"[bold]no-database endpoint[/bold] on :{port}, {args.workers} workers")
        nodb = Server(
            "nodb",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-nodb",
                str(port),
                "--workers",
                str(args.workers),
            ],
            env,
            port,
            logdir,
        )
        servers.append(nodb)
        nodb.wait_healthy()
        nload = Workload(port, None, args.batch_size)
        ncpu = Cpu(nodb.proc.pid, dbname)
        scenario("no-DB: batches", "nodb_batches", nodb, ncpu, args.batch_conns, lambda: nload.batch)
        scenario(
            "no-DB: single events",
            "nodb_singles",
            nodb,
            ncpu,
            args.single_conns,
            lambda: nload.single_stream().__next__,
        )
        nodb.stop()
        servers.remove(nodb)

    # 3. The database's ceiling: COPY of the same rows, no server running.
    copies: dict[str, dict[str, Any]] = {}
    if not args.skip_copy:
        ccpu = Cpu(None, dbname)
        for key_, chunk, label in (
            ("copy_chunked", args.batch_size, f"COPY, {args.batch_size} rows/txn"),
            ("copy_one", None, "COPY, one transaction"),
        ):
            say(f"  {label}: {args.copy_rows:,} rows ...")
            c = copy_baseline(url, copy_project_id, args.copy_rows, chunk, args.batch_size, ccpu)
            c["label"] = label
            copies[key_] = c
            say(f"    {c['rows_per_s']:,.0f} rows/s, cpu {c['cpu_cores']}")

    # 4. Correctness: what the server acknowledged is what is in the database.
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT generation_id) FROM feedback_events WHERE project_id = %s",
            (project_id,),
        ).fetchone()
        gens = conn.execute("SELECT count(*) FROM generations WHERE project_id = %s", (project_id,)).fetchone()
        copied = conn.execute(
            "SELECT count(*) FROM feedback_events WHERE project_id = %s", (copy_project_id,)
        ).fetchone()
    assert rows is not None and gens is not None and copied is not None
    acked = _stored_total.get("editloop", 0)
    correctness = {
        "rows_in_db": rows[0],
        "acknowledged_stored": acked,
        "duplicates_reported": _dups_total.get("editloop", 0),
        "generation_rows": gens[0],
        "distinct_generation_ids_in_events": rows[1],
        "copy_rows_in_db": copied[0],
        "copy_rows_expected": sum(c["rows"] for c in copies.values()),
    }
    # A 5xx is a defect whatever the rates: the server's log must hold no traceback (out of shared memory was one).
    log = ours.log.read_text(errors="replace") if ours.log.exists() else ""
    correctness["server_tracebacks"] = log.count("Traceback (most recent call last)")
    correctness["out_of_shared_memory"] = log.count("out of shared memory")
    correctness["non_2xx"] = sum(r["non_2xx"] for k, r in runs.items() if k.startswith("ours"))
    correctness["ok"] = (
        rows[0] == acked
        and correctness["server_tracebacks"] == 0
        and correctness["non_2xx"] == 0
        and correctness["duplicates_reported"] == 0
        and gens[0] == rows[1]
        and copied[0] == correctness["copy_rows_expected"]
    )

    result: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "serve_nodb"},
        "git": git_state(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgres": pg_info,
        },
        "workload": load.body_sizes(),
        "prefill": prefill,
        "scenarios": runs,
        "copy": copies,
        "correctness": correctness,
    }
    result["ratios"], result["targets"] = ratios_and_targets(runs, copies, args)
    report(console, result, args)
    return result


def ratios_and_targets(
    runs: dict[str, Any], copies: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    def ev(k: str) -> float | None:
        """Events/s, or the sustained rate where folding lagged behind (the lower)."""
        if k not in runs:
            return None
        return min(runs[k]["events_per_s"], runs[k].get("sustained_events_per_s", runs[k]["events_per_s"]))

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    ratios = {
        "batches_vs_copy_chunked": ratio(ev("ours_batches"), copies.get("copy_chunked", {}).get("rows_per_s")),
        "batches_vs_copy_one": ratio(ev("ours_batches"), copies.get("copy_one", {}).get("rows_per_s")),
        "batches_vs_nodb_batches": ratio(ev("ours_batches"), ev("nodb_batches")),
        "singles_vs_nodb_singles": ratio(ev("ours_singles"), ev("nodb_singles")),
    }
    fixed = runs.get("ours_fixed_rate")
    targets = [
        {
            "target": "batches >= 20,000 events/s",
            "measured": ev("ours_batches"),
            "unit": "events/s",
            "ok": (ev("ours_batches") or 0) >= 20_000,
        },
        {
            "target": "single events >= 2,000 events/s",
            "measured": ev("ours_singles"),
            "unit": "events/s",
            "ok": (ev("ours_singles") or 0) >= 2_000,
        },
        {
            "target": f"p99 <= 25 ms at {args.rate:,.0f} events/s offered",
            "measured": fixed["p99_ms"] if fixed else None,
            "unit": "ms",
            "ok": bool(fixed)
            and fixed["p99_ms"] <= 25
            and fixed["errors"] == 0
            and fixed["events_per_s"] >= 0.97 * args.rate,
        },
    ]
    return ratios, targets


def report(console: Any, result: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.table import Table

    runs, copies = result["scenarios"], result["copy"]
    t = Table(
        title=f"editloop ingest @ {result['git']['commit']}{' + uncommitted changes' if result['git']['dirty'] else ''}"
        f", {args.workers} workers, {result['machine']['cpus']} CPUs, {args.duration:g}s per scenario",
        title_justify="left",
    )
    for col in (
        "scenario",
        "events/s",
        "non-2xx",
        "folded too/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "new DB conn/s",
        "cores: server (per worker) / pg / client / irq / other",
    ):
        t.add_column(col, justify="left" if col.startswith(("scenario", "cores")) else "right")

    def cores(c: dict[str, Any]) -> str:
        split = "+".join(f"{w:.2f}" for w in c.get("workers", [])[:4])
        server = f"{c['server']:.2f}" + (f" ({split})" if split else "")
        return f"{server} / {c['postgres']:.2f} / {c['client']:.2f} / {c['irq']:.2f} / {c['other']:.2f}"

    for key, r in runs.items():
        label = f"{r['label']} (C={r['connections']})"
        t.add_row(
            label,
            f"{r['events_per_s']:,.0f}",
            str(r["non_2xx"]),
            f"{r['sustained_events_per_s']:,.0f}" if "sustained_events_per_s" in r else "",
            f"{r['requests_per_s']:,.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            str(r["errors"]),
            f"{r['db_per_s']['sessions_opened']:.0f}",
            cores(r["cpu_cores"]),
        )
        if key == "ours_fixed_rate":
            t.add_section()
    for c in copies.values():
        t.add_row(c["label"], f"{c['rows_per_s']:,.0f}", "", "", "", "", "", "", "", "", cores(c["cpu_cores"]))
    console.print(t)
    fixed = runs.get("ours_fixed_rate")
    if fixed:
        console.print(
            f"fixed rate: offered {fixed['offered_events_per_s']:,.0f} events/s, "
            f"achieved {fixed['events_per_s']:,.0f}; "
            f"latency from the scheduled send time; client send lag p99 {fixed['send_lag_p99_ms']:.1f} ms "
            "(above ~2 ms: the server fell behind the timetable, or the client did)"
        )
    profiles = {k: r["py_spy"] for k, r in runs.items() if "py_spy" in r}
    if profiles:
        pt = Table(title="py-spy --gil: where the server workers' Python CPU goes", title_justify="left")
        pt.add_column("bucket")
        for k in profiles:
            pt.add_column(runs[k]["label"], justify="right")
        buckets = [name for name, _ in PROFILE_RULES] + ["other"]
        for b in buckets:
            pt.add_row(b, *(f"{p.get('share', {}).get(b, 0):.1%}" for p in profiles.values()))
        console.print(pt)
        for k, p in profiles.items():
            console.print(f"  {k}: {p.get('file') or p.get('error')}")

    rt = Table(title="ratios", title_justify="left")
    rt.add_column("ours vs baseline")
    rt.add_column("ratio", justify="right")
    names = {
        "batches_vs_copy_chunked": f"batches / COPY {args.batch_size} rows per txn",
        "batches_vs_copy_one": "batches / COPY one transaction",
        "batches_vs_nodb_batches": "batches / no-DB batches",
        "singles_vs_nodb_singles": "single events / no-DB single events",
    }
    for k, v in result["ratios"].items():
        rt.add_row(names[k], "-" if v is None else f"{v:.1%}")
    console.print(rt)

    tt = Table(title="targets", title_justify="left")
    for col in ("target", "measured", "result"):
        tt.add_column(col)
    for tg in result["targets"]:
        m = "-" if tg["measured"] is None else f"{tg['measured']:,.1f} {tg['unit']}"
        tt.add_row(tg["target"], m, "[green]PASS[/green]" if tg["ok"] else "[red]FAIL[/red]")
    console.print(tt)

    c = result["correctness"]
    verdict = "[green]OK[/green]" if c["ok"] else "[red]MISMATCH[/red]"
    console.print(
        f"correctness {verdict}: {c['rows_in_db']:,} rows in feedback_events for the project, "
        f"{c['acknowledged_stored']:,} acknowledged as stored, {c['duplicates_reported']} duplicates; "
        f"{c['generation_rows']:,} generation rows for {c['distinct_generation_ids_in_events']:,} "
        f"generation ids; COPY rows {c['copy_rows_in_db']:,}/{c['copy_rows_expected']:,}; "
        f"{c['non_2xx']} non-2xx answers, {c['server_tracebacks']} tracebacks in the server's log "
        f"({c['out_of_shared_memory']} out of shared memory)"
    )
    rej = sum(r["rejected_events"] for r in runs.values())
    red = sum(r["secrets_redacted"] for r in runs.values())
    if rej or red:
        console.print(f"[yellow]note:[/yellow] {rej} events rejected as invalid, {red} secrets redacted")


if __name__ == "__main__":
    sys.exit(main())
