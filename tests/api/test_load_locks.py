"""Under concurrent 100-event batches, `editloop serve --workers 2` on a Postgres with the stock lock table
(`max_locks_per_transaction` 64) answers every request with a 2xx and never runs out of shared memory: the fold's
locks are bounded whatever the batch. Slow: `pytest -m slow`."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.projects import Role, create_key, create_project
from feedback.models import FeedbackEvent
from tests.conftest import PG_ADMIN, free_port
from tests.factories import generation, new_id

BATCH = 100
CONNECTIONS = 16
SECONDS = 15.0
MAX_REQUESTS = 3000  # per connection: the load is bounded in count as well as in time


def _serve(db_url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "EDITLOOP_DATABASE_URL": db_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text(errors='replace')}")


async def _load(url: str, key: str) -> tuple[dict[int, int], set[str]]:
    statuses: dict[int, int] = {}
    acked: set[str] = set()
    stop_at = time.monotonic() + SECONDS

    async def connection(worker: int) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            for _ in range(MAX_REQUESTS):
                if time.monotonic() > stop_at:
                    return
                events = [generation(new_id(f"w{worker}")) for _ in range(BATCH)]
                r = await c.post("/v1/events", json={"events": events})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    acked.update(e["event_id"] for e in events)

    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return statuses, acked


@pytest.mark.slow
def test_concurrent_batches_on_a_stock_lock_table_get_no_5xx(pg_url, tmp_path):
    with psycopg.connect(PG_ADMIN) as conn:
        locks = int(conn.execute("SHOW max_locks_per_transaction").fetchone()[0])
    assert locks <= 64, f"this test proves the fold on Postgres' stock lock table; this server has {locks} per txn"
    with session_scope(pg_url) as session:
        project = create_project(session, f"load-{new_id()}")
        _, key = create_key(session, project, Role.ingest)
    port, log = free_port(), tmp_path / "serve.log"
    proc = _serve(pg_url, port, log)
    try:
        statuses, acked = asyncio.run(_load(f"http://127.0.0.1:{port}", key))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert sum(statuses.values()) > 50, f"the load never got going: {statuses}"
    assert set(statuses) == {200}, f"answers by status: {statuses}\n{text[-3000:]}"
    assert "out of shared memory" not in text and "Traceback" not in text, text[-3000:]
    with session_scope(pg_url) as session:
        stored = session.scalar(
            select(func.count()).select_from(FeedbackEvent).where(FeedbackEvent.project_id == project.id)
        )
    assert stored == len(acked)
