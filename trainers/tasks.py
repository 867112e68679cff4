"""Thin Celery wrappers over the retraining pipeline; tests call the functions directly."""

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from core.db import session_scope
from core.errors import EditloopError
from core.projects import Project
from core.queue import celery_app
from core.settings import get_settings
from feedback.tasks import build_project_rows
from trainers import canary, runs
from trainers.config import model_settings
from trainers.triggers import check_trigger

log = logging.getLogger(__name__)


def refresh_project(url: str, project_id: int, partitions: int = 0) -> int | None:
    """Build the project's rows, then start a run if a trigger is due. Two short transactions, so the
    trigger sees the committed rows. Returns the id of the run started, if any. With `partitions` > 1 (Postgres)
    the build is only planned here and finishes on the default workers: the trigger sees its rows next time."""
    build_project_rows(url, project_id, partitions)
    with session_scope(url) as session:
        run = check_trigger(session, project_id)
        return run.id if run else None


@celery_app.task(name="trainers.refresh_project")
def refresh_project_task(project_id: int) -> int | None:
    settings = get_settings()
    return refresh_project(settings.sqlalchemy_url, project_id, settings.rows_partitions)


def apply_canary_policies(url: str, projects: Sequence[tuple[int, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """Apply the canary policy of each project whose `model.canary_policy` is not off, one short transaction each,
    so that one project's failure neither undoes nor stops another's. Returns the decisions taken."""
    decisions = []
    for project_id, project_settings in projects:
        try:
            if model_settings(project_settings).canary_policy == "off":
                continue
            with session_scope(url) as session:
                decision = canary.apply_canary_policy(session, project_id)
        except EditloopError as exc:
            log.warning("canary policy of project %s: %s", project_id, exc.detail)
            continue
        if decision["action"] != "none":
            log.info("canary policy of project %s: %s: %s", project_id, decision["action"], decision["reason"])
        decisions.append(decision)
    return decisions


@celery_app.task(name="trainers.schedule_tick")
def schedule_tick() -> int:
    """Beat's periodic nudge: one refresh message per project, so projects are refreshed in parallel; then the
    canary policies (after the messages, so that a failing policy never holds a refresh back)."""
    url = get_settings().sqlalchemy_url
    with session_scope(url) as session:
        runs.reap(session)  # runs of killed workers: re-queued or failed
        projects = [(p.id, p.settings) for p in session.scalars(select(Project).order_by(Project.id))]
    for project_id, _ in projects:
        refresh_project_task.delay(project_id)
    apply_canary_policies(url, projects)
    return len(projects)


@celery_app.task(name="trainers.run_training")
def run_training_task(run_id: int) -> str:
    """Routed to the `gpu` queue. Claims the run; a duplicate message finds it claimed and does nothing."""
    return runs.execute(get_settings().sqlalchemy_url, run_id)
