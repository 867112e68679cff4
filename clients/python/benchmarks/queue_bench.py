"""What the Python client costs an editor: the median time of one `track(...).accepted()` (an event written to
the SQLite queue, committed), and how fast a full queue drains to a local `editloop serve`.

    python clients/python/benchmarks/queue_bench.py                      # starts a server on a temporary SQLite
    python clients/python/benchmarks/queue_bench.py --database-url postgresql+psycopg://postgres@127.0.0.1/db
    python clients/python/benchmarks/queue_bench.py --url http://127.0.0.1:8000 --key elk_...

Run from the repository root (it starts the server with `python -m api.cli serve`)."""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from editloop_client import EditloopClient


def enqueue(queue: Path, n: int) -> list[float]:
    client = EditloopClient("http://127.0.0.1:9", "unused", queue_path=queue, start=False)
    times = []
    for i in range(n):
        handle = client.track(f"bench-{i}")
        t0 = time.perf_counter_ns()
        handle.accepted()
        times.append((time.perf_counter_ns() - t0) / 1000)
    client.queue.close()
    return times


def drain(queue: Path, url: str, key: str, batch_size: int) -> tuple[int, float]:
    client = EditloopClient(url, key, queue_path=queue, batch_size=batch_size, start=False)
    n = len(client.queue)
    t0 = time.perf_counter()
    assert client.sender.flush(timeout_s=600), "the queue did not drain"
    elapsed = time.perf_counter() - t0
    assert client.stats.stored == n, client.stats
    client.close()
    return n, elapsed


def local_server(database_url: str | None, work: Path) -> tuple[subprocess.Popen, str, str]:
    from core import migrate
    from core.db import session_scope
    from core.projects import Role, create_key, create_project
    from tests.conftest import free_port

    url = database_url or f"sqlite:///{work / 'editloop.db'}"
    migrate.upgrade(url)
    with session_scope(url) as session:
        project = create_project(session, f"bench-{uuid.uuid4().hex[:8]}")
        _, key = create_key(session, project, Role.ingest)
    port = free_port()
    env = {**os.environ, "EDITLOOP_DATABASE_URL": url, "EDITLOOP_DATA_DIR": str(work / "data")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--no-background"],
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}", key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times = enqueue(work / "queue.db", args.events)
        print(
            f"enqueue: {len(times)} events, median {statistics.median(times):.1f} µs, "
            f"p99 {statistics.quantiles(times, n=100)[98]:.1f} µs"
        )
        proc = None
        if args.url:
            url, key = args.url, args.key
        else:
            proc, url, key = local_server(args.database_url, work)
        try:
            n, elapsed = drain(work / "queue.db", url, key, args.batch_size)
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
        print(f"drain: {n} events in {elapsed:.2f} s = {n / elapsed:,.0f} events/s (batches of {args.batch_size})")


if __name__ == "__main__":
    main()
