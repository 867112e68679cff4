"""A server killed with SIGKILL under load loses no acknowledged event, and what it left unfolded is folded after
the restart. Slow: `pytest -m slow`."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.projects import Role, create_key, create_project
from feedback.models import FeedbackEvent, FoldQueue, Generation
from tests.conftest import free_port
from tests.factories import feedback, generation, new_id


def _start(db_url: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "EDITLOOP_DATABASE_URL": db_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


@pytest.mark.slow
def test_sigkill_mid_load_loses_no_acknowledged_event(pg_url):
    name = f"crash-{new_id()}"
    with session_scope(pg_url) as session:
        project = create_project(session, name)
        _, key = create_key(session, project, Role.ingest)
    port = free_port()
    proc = _start(pg_url, port)
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=5
        ) as c:
            n = 0
            while not stop.is_set() and n < 5000:  # bounded in count and in time
                gid = new_id(f"w{worker}")
                batch = [generation(gid), feedback(gid, "edited", 1, final_text="pass\n")]
                n += 1
                try:
                    r = c.post("/v1/events", json={"events": batch})
                except httpx.HTTPError:
                    continue  # the server died: this batch was never acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.update(e["event_id"] for e in batch)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    for child in _children(proc.pid):
        os.kill(child, signal.SIGKILL)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 100, "the load never got going"

    proc = _start(pg_url, port)
    try:
        with session_scope(pg_url) as session:
            stored = set(session.scalars(select(FeedbackEvent.event_id).where(FeedbackEvent.project_id == project.id)))
        assert acked <= stored, f"{len(acked - stored)} acknowledged events lost"
        # What the killed processes queued and did not fold, the restarted server's folder folds by itself.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with session_scope(pg_url) as session:
                left = session.scalar(
                    select(func.count()).select_from(FoldQueue).where(FoldQueue.project_id == project.id)
                )
            if not left:
                break
            time.sleep(0.2)
        assert not left, f"{left} fold queue rows were never folded"
        with session_scope(pg_url) as session:
            generations = dict(
                session.execute(
                    select(Generation.generation_id, Generation.outcome).where(Generation.project_id == project.id)
                ).all()
            )
        assert {e.rsplit(":", 1)[0] for e in stored} == set(generations)
        assert set(generations.values()) <= {"edited", "shown", "pending"}
        edited = {e.rsplit(":", 1)[0] for e in stored if e.endswith(":edited")}
        assert all(generations[g] == "edited" for g in edited)
    finally:
        proc.kill()
        proc.wait()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]
