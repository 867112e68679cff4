"""A real Celery worker, started as in production, builds rows and cuts a snapshot for feedback that came in
through the API: on Redis with Postgres, and on the embedded default (SQLite database, SQLite-backed queue)."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from core.db import session_scope
from core.projects import get_project
from core.queue import configure
from core.settings import Settings
from feedback.models import DatasetBuild, SnapshotRow
from tests.conftest import TEST_LIMITS, Server, make_tenant, start_server
from tests.factories import feedback, generation
from trainers.models import TrainingRun

CODE = "def area(w, h):\n    return w * h\n"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis database index of our own; emptied again afterwards."""
    for index in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=index)
        if client.dbsize() == 0 and client.set("editloop-test-claim", "1", nx=True):
            client.delete("editloop-test-claim")
            yield f"redis://127.0.0.1:6379/{index}"
            client.flushdb()
            return
    pytest.fail("no empty Redis database index")


def start_worker(env: dict[str, str], data_dir: Path) -> subprocess.Popen:
    log = open(data_dir / "worker.log", "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "worker", "--queues", "default", "--loglevel", "INFO"],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate, what: str, proc: subprocess.Popen, log: Path, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"worker exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def editor_session(prefix: str) -> tuple[list[dict], dict[str, str]]:
    """Events as editors send them (with a resend, in scrambled order) and the edits they record."""
    edits = {f"{prefix}-e{i}": CODE.replace("w * h", f"float(w) * float(h)  # v{i}") for i in range(4)}
    events = []
    for i, (gid, final) in enumerate(edits.items()):
        events += [
            generation(gid, i, prompt=f"# area {i}\n", completion=CODE, language="python"),
            feedback(gid, "edited", i + 30, final_text=final),
        ]
    for j, kind in enumerate(["accepted", "rejected"]):
        gid = f"{prefix}-c{j}"
        events += [
            generation(gid, 50 + j, prompt="# shared\n", completion=CODE + f"# {kind}\n"),
            feedback(gid, kind, 60 + j),
        ]
    events = events[::-1] + events[:3]
    return events, edits


def run_loop(server: Server, data_dir: Path, broker: str, env: dict[str, str]) -> None:
    tenant = make_tenant(server)
    with session_scope(server.db_url) as session:
        project = get_project(session, tenant.name)
        project.settings = {"dataset": {"retrain_min_new_rows": 1, "eval_fraction": 0.25}}
        project_id = project.id
    events, edits = editor_session(tenant.name)
    r = tenant.ingest.post("/v1/events", json={"events": events})
    assert r.status_code == 200 and r.json()["stored"] == len(events) - 3, r.text

    worker = start_worker(env, data_dir)
    log = data_dir / "worker.log"
    try:
        app = configure(Settings(database_url=server.db_url, broker_url=broker, data_dir=data_dir))
        app.send_task("trainers.refresh_project", args=[project_id])

        def run_started():
            with session_scope(server.db_url) as s:
                return s.scalar(select(TrainingRun).where(TrainingRun.project_id == project_id))

        run = wait_for(run_started, "the first refresh", worker, log)
        assert (run.status, run.trigger, run.kind) == ("queued", "rows", "pipeline")
        with session_scope(server.db_url) as s:
            rows = s.scalars(select(SnapshotRow).where(SnapshotRow.snapshot_id == run.snapshot_id)).all()
            pairs = {(r.chosen, r.rejected, r.prompt) for r in rows if r.kind == "edit_pair"}
            choice = [(r.chosen, r.rejected) for r in rows if r.kind == "choice_pair"]
            prompts_by_split = {r.prompt_hash: r.split for r in rows}
            for r in rows:
                assert prompts_by_split[r.prompt_hash] == r.split  # no prompt on both sides
        expected = {(final, CODE, f"# area {i}\n") for i, final in enumerate(edits.values())}
        assert pairs == expected
        assert choice == [(CODE + "# accepted\n", CODE + "# rejected\n")]
        assert {r.split for r in rows} == {"train", "eval"}

        # A second refresh with nothing new adds nothing and starts nothing.
        app.send_task("trainers.refresh_project", args=[project_id])

        def second_build():
            with session_scope(server.db_url) as s:
                builds = s.scalars(
                    select(DatasetBuild).where(DatasetBuild.project_id == project_id).order_by(DatasetBuild.id)
                ).all()
                return builds if len(builds) == 2 and builds[1].finished_at else None

        builds = wait_for(second_build, "the second refresh", worker, log)
        assert (builds[1].rows_added, builds[1].rows_changed, builds[1].rows_removed) == (0, 0, 0)
        time.sleep(1)
        with session_scope(server.db_url) as s:
            runs = s.scalar(select(func.count()).where(TrainingRun.project_id == project_id))
        assert runs == 1
    finally:
        stop(worker)
        tenant.ingest.close()
        tenant.admin.close()


def test_worker_on_redis_and_postgres(pg_url, redis_url, tmp_path):
    settings = Settings(database_url=pg_url, data_dir=tmp_path, **TEST_LIMITS)
    srv, thread, url = start_server(settings)
    try:
        env = {"EDITLOOP_DATABASE_URL": pg_url, "EDITLOOP_BROKER_URL": redis_url, "EDITLOOP_DATA_DIR": str(tmp_path)}
        run_loop(Server(url, pg_url, settings), tmp_path, redis_url, env)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_worker_on_the_embedded_default(tmp_path):
    """No server at all: the SQLite file and the SQLite-backed queue that a fresh `editloop` uses."""
    settings = Settings(data_dir=tmp_path, **TEST_LIMITS)
    from core import migrate

    migrate.upgrade(settings.sqlalchemy_url)
    srv, thread, url = start_server(settings)
    try:
        env = {"EDITLOOP_DATA_DIR": str(tmp_path)}
        run_loop(Server(url, settings.sqlalchemy_url, settings), tmp_path, settings.celery_broker_url, env)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
