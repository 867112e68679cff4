"""The retraining trigger: by row count, by timetable, and never two active runs for one project."""

import threading
import uuid
from datetime import timedelta

from sqlalchemy import func, select

from core.db import session_scope, utcnow
from core.projects import create_project
from feedback.models import DatasetSnapshot, TrainingRow
from trainers.models import TrainingRun
from trainers.triggers import check_trigger, new_rows_since_snapshot, queue_pipeline_run


def project_with_rows(url: str, n: int, dataset: dict | None = None) -> int:
    now = utcnow()
    with session_scope(url) as session:
        project = create_project(session, f"t-{uuid.uuid4().hex[:10]}")
        project.settings = {"dataset": dataset or {}}
        session.flush()
        add_rows(session, project.id, n, now)
        return project.id


def add_rows(session, project_id: int, n: int, built_at) -> None:
    for i in range(n):
        key = uuid.uuid4().hex
        session.add(
            TrainingRow(
                project_id=project_id,
                kind="sft",
                source_key=f"sft:{key}",
                prompt=f"# task {key}\n",
                messages=None,
                prompt_hash=key,
                chosen=None,
                rejected=None,
                completion=f"x = {i}\n",
                label=None,
                user=f"u{i % 3}",
                occurred_at=built_at,
                generation_ids=[key],
                event_ids=[f"{key}:gen"],
                content_hash=key,
                active=True,
                built_at=built_at,
            )
        )


def runs(url: str, project_id: int) -> list[TrainingRun]:
    with session_scope(url) as session:
        return list(session.scalars(select(TrainingRun).where(TrainingRun.project_id == project_id)))


def test_enough_new_rows_start_one_run(db_url):
    pid = project_with_rows(db_url, 5, {"retrain_min_new_rows": 5})
    with session_scope(db_url) as session:
        run = check_trigger(session, pid)
        assert run is not None and (run.status, run.trigger) == ("queued", "rows")
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        assert snapshot.row_count == 5 and new_rows_since_snapshot(session, pid) == 0
    with session_scope(db_url) as session:
        add_rows(session, pid, 10, utcnow() + timedelta(seconds=1))
    with session_scope(db_url) as session:
        assert check_trigger(session, pid) is None  # a run is still active
    assert len(runs(db_url, pid)) == 1


def test_too_few_rows_or_disabled_start_nothing(db_url):
    few = project_with_rows(db_url, 4, {"retrain_min_new_rows": 5})
    off = project_with_rows(db_url, 50, {"retrain_min_new_rows": 5, "retrain_enabled": False})
    with session_scope(db_url) as session:
        assert check_trigger(session, few) is None and check_trigger(session, off) is None
        assert (
            session.scalar(
                select(func.count()).select_from(DatasetSnapshot).where(DatasetSnapshot.project_id.in_([few, off]))
            )
            == 0
        )


def test_timetable(db_url):
    pid = project_with_rows(db_url, 2, {"retrain_min_new_rows": 1000, "retrain_every_hours": 1})
    now = utcnow()
    with session_scope(db_url) as session:
        first = check_trigger(session, pid, now)
        assert first is not None and first.trigger == "schedule"
        first.status = "succeeded"
    with session_scope(db_url) as session:
        add_rows(session, pid, 1, now + timedelta(minutes=1))
    with session_scope(db_url) as session:
        assert check_trigger(session, pid, now + timedelta(minutes=30)) is None  # not due yet
        second = check_trigger(session, pid, now + timedelta(hours=2))
        assert second is not None and second.trigger == "schedule"


def test_concurrent_triggers_leave_one_active_run(pg_url):
    pid = project_with_rows(pg_url, 3)
    barrier = threading.Barrier(6)
    started: list[int | None] = []

    def trigger() -> None:
        with session_scope(pg_url) as session:
            barrier.wait()
            run = queue_pipeline_run(session, pid, "rows")
            started.append(run.id if run else None)

    threads = [threading.Thread(target=trigger) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in started if r is not None]) == 1
    assert [r.status for r in runs(pg_url, pid)] == ["queued"]
    with session_scope(pg_url) as session:  # the losers' snapshots were rolled back with their runs
        assert session.scalar(select(func.count()).where(DatasetSnapshot.project_id == pid)) == 1
