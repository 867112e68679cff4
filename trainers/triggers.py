"""The retraining trigger: after a project's rows are built, start a run when enough rows are new since the last
snapshot, or when its timetable says so. One active run per project, however many triggers fire at once (a
partial unique index decides). A triggered run is a snapshot plus a queued `pipeline` run (reward model -> policy
-> evaluation -> version -> promotion if the project allows it), nudged to the `gpu` queue after the commit."""

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import utcnow
from core.projects import Project
from core.queue import send_after_commit
from feedback.models import DatasetSnapshot, TrainingRow
from feedback.snapshots import cut_snapshot, dataset_config
from trainers.config import model_settings, run_config
from trainers.models import ACTIVE, TrainingRun
from trainers.runs import TASK


def new_rows_since_snapshot(session: Session, project_id: int) -> int:
    last = session.scalar(select(func.max(DatasetSnapshot.created_at)).where(DatasetSnapshot.project_id == project_id))
    query = select(func.count()).where(TrainingRow.project_id == project_id, TrainingRow.active.is_(True))
    if last is not None:
        query = query.where(TrainingRow.built_at > last)
    return int(session.scalar(query) or 0)


def due_trigger(session: Session, project: Project, now: datetime) -> str | None:
    """Why a run should start now ("rows" or "schedule"), or None."""
    config = dataset_config(project)
    if not config.retrain_enabled:
        return None
    fresh = new_rows_since_snapshot(session, project.id)
    if fresh >= config.retrain_min_new_rows:
        return "rows"
    if config.retrain_every_hours is not None and fresh > 0:
        last_run = session.scalar(select(func.max(TrainingRun.created_at)).where(TrainingRun.project_id == project.id))
        if last_run is None or now - last_run >= timedelta(hours=config.retrain_every_hours):
            return "schedule"
    return None


def queue_pipeline_run(
    session: Session, project_id: int, trigger: str, now: datetime | None = None
) -> TrainingRun | None:
    """Cut a snapshot and record a queued pipeline run, unless the project already has an active run."""
    now = now or utcnow()
    active = select(TrainingRun.id).where(TrainingRun.project_id == project_id, TrainingRun.status.in_(ACTIVE))
    if session.scalar(active) is not None:
        return None
    try:
        with session.begin_nested():
            snapshot = cut_snapshot(session, project_id, now=now)
            project = session.get(Project, project_id)
            assert project is not None
            config = run_config("pipeline", model_settings(project.settings).pipeline)
            run = TrainingRun(
                project_id=project_id,
                kind="pipeline",
                status="queued",
                trigger=trigger,
                snapshot_id=snapshot.id,
                config=config.model_dump(mode="json"),
                attempts=0,
                version_ids=[],
                progress={},
                metrics={},
                created_at=now,
            )
            session.add(run)
            session.flush()
    except IntegrityError:
        return None  # another trigger got there first: the unique index keeps one active run
    send_after_commit(session, TASK, run.id, queue="gpu")
    return run


def check_trigger(session: Session, project_id: int, now: datetime | None = None) -> TrainingRun | None:
    now = now or utcnow()
    project = session.get(Project, project_id)
    if project is None:
        return None
    trigger = due_trigger(session, project, now)
    return queue_pipeline_run(session, project_id, trigger, now) if trigger else None
