"""Thin Celery wrappers over the retraining pipeline; tests call the functions directly."""

from sqlalchemy import select

from core.db import session_scope
from core.projects import Project
from core.queue import celery_app
from core.settings import get_settings
from feedback.tasks import build_project_rows
from trainers import runs
from trainers.pipeline import check_trigger


def refresh_project(url: str, project_id: int) -> int | None:
    """Build the project's rows, then start a run if a trigger is due. Two short transactions, so the
    trigger sees the committed rows. Returns the id of the run started, if any."""
    build_project_rows(url, project_id)
    with session_scope(url) as session:
        run = check_trigger(session, project_id)
        return run.id if run else None


@celery_app.task(name="trainers.refresh_project")
def refresh_project_task(project_id: int) -> int | None:
    return refresh_project(get_settings().sqlalchemy_url, project_id)


@celery_app.task(name="trainers.schedule_tick")
def schedule_tick() -> int:
    """Beat's periodic nudge: one refresh message per project, so projects are refreshed in parallel."""
    with session_scope(get_settings().sqlalchemy_url) as session:
        runs.reap(session)  # runs of killed workers: re-queued or failed
        project_ids = list(session.scalars(select(Project.id).order_by(Project.id)))
    for project_id in project_ids:
        refresh_project_task.delay(project_id)
    return len(project_ids)


@celery_app.task(name="trainers.run_training")
def run_training_task(run_id: int) -> str:
    """Routed to the `gpu` queue. Claims the run; a duplicate message finds it claimed and does nothing."""
    return runs.execute(get_settings().sqlalchemy_url, run_id)
