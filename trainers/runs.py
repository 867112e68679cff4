"""Training runs: create, claim, execute, finish, and reap the runs of dead workers.

The row is the state. `create_run` inserts a queued row and sends `trainers.run_training` after the commit; the task
claims the row with a conditional update (queued -> running), so a duplicated message trains nothing twice. The
training itself (trainers.execute) runs with no transaction open; progress and a heartbeat are written in short
transactions (trainers.run_context). The adapter is built in a staging directory and registered only when complete
(trainers.registry), so a run killed mid-way registers nothing: its heartbeat stops, and `reap` re-queues it (or
fails it after EDITLOOP_RUN_MAX_ATTEMPTS) and removes its staging directory."""

import logging
import traceback
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import session_scope, utcnow
from core.errors import Conflict, InvalidInput, NotFound
from core.projects import Project
from core.queue import send_after_commit
from core.settings import Settings, get_settings
from feedback.snapshots import cut_snapshot, get_snapshot
from trainers.config import model_settings, run_config
from trainers.execute import train_and_register
from trainers.models import ACTIVE, TrainingRun
from trainers.run_context import Cancelled, RunReporter, remove_staging

log = logging.getLogger(__name__)
TASK = "trainers.run_training"


def create_run(
    session: Session,
    project_id: int,
    kind: str,
    overrides: dict[str, Any] | None = None,
    *,
    snapshot_id: int | None = None,
    actor: str | None = None,
    trigger: str = "manual",
    now: datetime | None = None,
    nudge: bool = True,
) -> TrainingRun:
    """Queue a run of `kind` on a snapshot (default: a new snapshot of the project's current rows). With `nudge`,
    a message for a `gpu` worker is sent after the commit; without it, the caller executes the run itself."""
    now = now or utcnow()
    config = run_config(kind, overrides)
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    if model_settings(project.settings).base_model is None:
        raise InvalidInput(
            "settings.model.base_model: not set; name a causal LM by hub id or local path first"
            f" (editloop projects set {project.name} model.base_model=PATH)"
        )
    active = session.scalar(
        select(TrainingRun.id).where(TrainingRun.project_id == project_id, TrainingRun.status.in_(ACTIVE))
    )
    if active is not None:
        raise Conflict(f"the project already has an active run ({active}); one at a time")
    snapshot = (
        get_snapshot(session, project_id, snapshot_id)
        if snapshot_id is not None
        else cut_snapshot(session, project_id, now=now)
    )
    run = TrainingRun(
        project_id=project_id,
        kind=kind,
        status="queued",
        trigger=trigger,
        snapshot_id=snapshot.id,
        config=config.model_dump(mode="json"),
        progress={},
        metrics={},
        created_at=now,
        created_by=actor,
        attempts=0,
        version_ids=[],
    )
    session.add(run)
    try:
        session.flush()
    except IntegrityError:  # the partial unique index: a concurrent create won
        raise Conflict("the project already has an active run; one at a time") from None
    if nudge:
        send_after_commit(session, TASK, run.id, queue="gpu")
    return run


def get_run(session: Session, project_id: int, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None or run.project_id != project_id:
        raise NotFound(f"training run {run_id} does not exist")
    return run


def list_runs(session: Session, project_id: int, limit: int = 50) -> list[TrainingRun]:
    query = select(TrainingRun).where(TrainingRun.project_id == project_id).order_by(TrainingRun.id.desc())
    return list(session.scalars(query.limit(limit)))


def cancel_run(session: Session, project_id: int, run_id: int) -> TrainingRun:
    """A queued run is cancelled at once; a running one stops at its next step and registers nothing."""
    run = get_run(session, project_id, run_id)
    if run.status == "queued":
        run.status, run.finished_at, run.error = "cancelled", utcnow(), "cancelled before it started"
    elif run.status == "running":
        run.cancel_requested = True
    else:
        raise Conflict(f"run {run_id} is already {run.status}")
    session.flush()
    return run


def claim(session: Session, run_id: int, now: datetime | None = None) -> bool:
    now = now or utcnow()
    claimed = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
        .values(status="running", started_at=now, heartbeat_at=now, attempts=TrainingRun.attempts + 1)
        .returning(TrainingRun.id)
    ).first()
    return claimed is not None


def execute(url: str, run_id: int, settings: Settings | None = None) -> str:
    """The task body: claim the run, train, evaluate, register, record. Returns the run's final status (or
    "skipped" when the row was not queued: a duplicate or stale message)."""
    settings = settings or get_settings()
    with session_scope(url) as session:
        if not claim(session, run_id):
            return "skipped"
    with RunReporter(url, run_id, heartbeat_s=max(1.0, settings.run_heartbeat_stale_s / 6)) as reporter:
        try:
            version_ids, metrics = train_and_register(url, run_id, settings, reporter)
        except Exception as exc:
            status = "cancelled" if isinstance(exc, Cancelled) else "failed"
            error = str(exc) if isinstance(exc, Cancelled | InvalidInput | ValueError) else _error(exc)
            log.warning("run %s %s: %s", run_id, status, error)
            _finish(url, run_id, status, error=error)
            return status
        finally:
            remove_staging(settings, run_id)
    _finish(url, run_id, "succeeded", metrics=metrics, version_ids=version_ids)
    return "succeeded"


def _error(exc: BaseException) -> str:
    tail = "".join(traceback.format_exception(exc)[-3:])
    return f"{type(exc).__name__}: {exc}\n{tail}"[:4000]


def _finish(
    url: str,
    run_id: int,
    status: str,
    *,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    version_ids: list[int] | None = None,
) -> None:
    with session_scope(url) as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status != "running":
            return
        run.status, run.error, run.finished_at = status, error, utcnow()
        if metrics is not None:
            previous = run.metrics or {}
            run.metrics = {**metrics, "live": previous.get("live", {}), "curve": previous.get("curve", {})}
        if version_ids is not None:
            run.version_ids = version_ids
        if status == "succeeded":
            run.progress = {**(run.progress or {}), "stage": "done"}


def reap(session: Session, settings: Settings | None = None, now: datetime | None = None) -> list[int]:
    """Runs whose worker died (no heartbeat for EDITLOOP_RUN_HEARTBEAT_STALE_S): re-queue them (a message is sent
    after the commit) or fail them after EDITLOOP_RUN_MAX_ATTEMPTS. Their staging directories go; nothing of theirs
    was registered. Returns the ids handled."""
    settings = settings or get_settings()
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.run_heartbeat_stale_s)
    stale = list(
        session.scalars(
            select(TrainingRun)
            .where(TrainingRun.status == "running", TrainingRun.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        )
    )
    for run in stale:
        remove_staging(settings, run.id)
        silent = f"no heartbeat since {run.heartbeat_at.isoformat() if run.heartbeat_at else 'start'}"
        if run.attempts >= settings.run_max_attempts or run.cancel_requested:
            run.status, run.finished_at = "failed", now
            run.error = f"worker lost: {silent}, after {run.attempts} attempt(s); nothing was registered"
        else:
            run.status, run.progress = "queued", {"stage": "requeued", "reason": f"worker lost: {silent}"}
            send_after_commit(session, TASK, run.id, queue="gpu")
    session.flush()
    return [run.id for run in stale]
