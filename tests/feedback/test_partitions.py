"""Tests for feedback.partitions: a partitioned build makes the rows a one-process build makes, whatever happens to
its workers and messages. Each test feeds the same events to two projects, builds one with build_rows and the other
in partitions, and compares their rows."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.db import session_scope
from core.errors import InvalidInput
from feedback.models import DatasetBuild, DatasetBuildPartition
from feedback.partitions import build_partition, finish, part_of, plan_build, work
from feedback.tasks import build_project_rows
from tests.factories import generation
from tests.feedback.test_rows import age, build, decided, edit, new_project, rows, send, variant
from tests.trainers.test_worker import redis_url  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [f"def task_{i}(items):\n" for i in range(12)]


def workload(seed: int) -> list[dict[str, Any]]:
    """Edits, accepted and rejected completions over a dozen prompts: every kind of row, groups in every partition."""
    events: list[dict[str, Any]] = []
    for i, prompt in enumerate(PROMPTS):
        g = f"s{seed}-p{i}"
        events += edit(f"{g}-edit", i, prompt=prompt)
        events += decided(f"{g}-good", "accepted", i + 1, variant(i % 10), prompt=prompt)
        events += decided(f"{g}-bad", "rejected", i + 2, variant((i + 1) % 10), prompt=prompt)
    return events


def both(pg_url: str, events: list[dict[str, Any]], projects: tuple[int, int] | None = None) -> tuple[int, int]:
    one, parted = projects or (new_project(pg_url), new_project(pg_url))
    send(pg_url, one, events)
    send(pg_url, parted, events)
    return one, parted


def partitioned(pg_url: str, project_id: int, parts: int = 3) -> DatasetBuild:
    with session_scope(pg_url) as session:
        plan = plan_build(session, project_id, parts)
    work(pg_url, plan, "test")
    with session_scope(pg_url) as session:
        found = session.scalars(
            select(DatasetBuild).where(DatasetBuild.project_id == project_id).order_by(DatasetBuild.id.desc())
        ).first()
        assert found is not None and found.finished_at is not None
        session.expunge(found)
        return found


def test_partitions_split_by_prompt_group():
    hashes = [f"{i:08x}" + "0" * 56 for i in range(100)]
    assert {part_of(h, 4) for h in hashes} == {0, 1, 2, 3}
    assert part_of(None, 4) == 0 and part_of(hashes[5], 4) == 5 % 4


def test_a_partitioned_build_makes_the_rows_of_a_one_process_build(pg_url):
    one, parted = both(pg_url, workload(1))
    first = build(pg_url, one)
    result = partitioned(pg_url, parted)
    assert rows(pg_url, parted, None) == rows(pg_url, one, None)
    assert result.report["partitions"] == 3
    for key in ("gates", "rows", "added"):
        assert {k: v for k, v in result.report[key].items() if v} == {k: v for k, v in first.report[key].items() if v}
    assert result.rows_added == first.rows_added > 0

    # Incrementally too: new feedback, and a generation that moves to a prompt of another partition.
    age(pg_url, one, 3600)
    age(pg_url, parted, 3600)
    moved = [generation("s1-p0-good", -10, event_id="s1-p0-good:gen-0", prompt=PROMPTS[1], completion=variant(0))]
    both(pg_url, workload(2) + moved, (one, parted))
    again = build(pg_url, one)
    result = partitioned(pg_url, parted)
    assert rows(pg_url, parted, None) == rows(pg_url, one, None)
    assert (result.rows_added, result.rows_changed, result.rows_removed) == (
        again.rows_added,
        again.rows_changed,
        again.rows_removed,
    )


def test_duplicate_and_lost_messages_change_nothing(pg_url):
    one, parted = both(pg_url, workload(3))
    build(pg_url, one)
    with session_scope(pg_url) as session:
        plan = plan_build(session, parted, 4)
        assert plan_build(session, parted, 4) == plan  # an unfinished plan is the plan
        ids = session.scalars(select(DatasetBuildPartition.id).where(DatasetBuildPartition.plan == plan)).all()
    assert build_partition(pg_url, ids[0], "a") and not build_partition(pg_url, ids[0], "b")  # a duplicate
    assert finish(pg_url, plan) is None  # three partitions still queued: their messages were lost
    assert work(pg_url, plan, "sweeper") == 3
    assert rows(pg_url, parted, None) == rows(pg_url, one, None)


def test_the_task_plans_partitions_and_sqlite_builds_in_one_process(pg_url, sqlite_url):
    p = new_project(pg_url)
    send(pg_url, p, workload(4))
    assert build_project_rows(pg_url, p, partitions=2) is None  # messages go after commit (no broker: none)
    with session_scope(pg_url) as session:
        parts = session.scalars(select(DatasetBuildPartition).where(DatasetBuildPartition.project_id == p)).all()
        assert sorted(x.part for x in parts) == [0, 1] and {x.state for x in parts} == {"queued"}
    s = new_project(sqlite_url)
    with session_scope(sqlite_url) as session, pytest.raises(InvalidInput):
        plan_build(session, s, 2)


VICTIM = """
import sys, time
from pathlib import Path
from feedback import partitions, rows

store = rows._Build._store
def slow_store(self, *args):
    store(self, *args)
    self.session.flush()
    Path(sys.argv[3]).write_text("wrote")
    time.sleep(600)
rows._Build._store = slow_store
partitions.work(sys.argv[1], sys.argv[2], "victim")
"""


def test_a_worker_killed_mid_partition_leaves_it_to_another_and_the_same_rows(pg_url, tmp_path):
    one, parted = both(pg_url, workload(5))
    build(pg_url, one)
    with session_scope(pg_url) as session:
        plan = plan_build(session, parted, 2)
    marker = tmp_path / "wrote"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, pg_url, plan, str(marker)], env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():  # it wrote rows of its partition, in a transaction still open
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    with session_scope(pg_url) as session:
        states = session.scalars(select(DatasetBuildPartition.state).where(DatasetBuildPartition.plan == plan)).all()
        assert "running" in states
    deadline = time.monotonic() + 30
    while finish(pg_url, plan) is None:  # the server drops the dead backend's locks as it notices the socket close
        work(pg_url, plan, "rescuer", stale=timedelta(0))
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert rows(pg_url, parted, None) == rows(pg_url, one, None)


def test_celery_workers_build_the_partitions_the_task_plans(pg_url, redis_url, tmp_path):  # noqa: F811 (fixture)
    """Two real default-queue worker processes: the build task plans, its messages go after the commit, the workers
    claim and build the partitions, and the last one finishes the build."""
    from core.queue import configure
    from core.settings import Settings
    from tests.trainers.test_worker import start_worker, stop, wait_for

    one, parted = both(pg_url, workload(6))
    build(pg_url, one)
    env = {
        "EDITLOOP_DATABASE_URL": pg_url,
        "EDITLOOP_BROKER_URL": redis_url,
        "EDITLOOP_DATA_DIR": str(tmp_path),
        "EDITLOOP_ROWS_PARTITIONS": "4",
    }
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    workers = [start_worker(env, tmp_path / name) for name in ("a", "b")]
    try:
        app = configure(Settings(database_url=pg_url, broker_url=redis_url, data_dir=tmp_path))
        app.send_task("feedback.build_rows", args=[parted])

        def finished():
            with session_scope(pg_url) as s:
                return s.scalar(select(DatasetBuild).where(DatasetBuild.project_id == parted))

        result = wait_for(finished, "the partitioned build", workers[0], tmp_path / "a" / "worker.log")
        assert result.report["partitions"] == 4
        with session_scope(pg_url) as s:
            claimed = set(
                s.scalars(select(DatasetBuildPartition.claimed_by).where(DatasetBuildPartition.project_id == parted))
            )
        assert len(claimed) >= 1 and None not in claimed
    finally:
        for worker in workers:
            stop(worker)
    assert rows(pg_url, parted, None) == rows(pg_url, one, None)
