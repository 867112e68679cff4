"""Training runs: create, claim, execute, report progress, finish, and reap the runs of dead workers.

The row is the state. `create_run` inserts a queued row and sends `trainers.run_training` after the commit; the task
claims the row with a conditional update (queued -> running), so a duplicated message trains nothing twice. The
training itself runs with no transaction open; progress and a heartbeat are written in short transactions. The
adapter is built in a staging directory and registered only when complete (trainers.registry), so a run killed
mid-way registers nothing: its heartbeat stops, and `reap` re-queues it (or fails it after
EDITLOOP_RUN_MAX_ATTEMPTS) and removes its staging directory."""

import logging
import threading
import time
import traceback
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import artifacts
from core.db import session_scope, utcnow
from core.errors import Conflict, InvalidInput, NotFound
from core.projects import Project
from core.queue import send_after_commit
from core.settings import Settings, get_settings
from feedback.snapshots import cut_snapshot, get_snapshot
from trainers.config import model_settings, run_config
from trainers.models import ACTIVE, TrainingRun

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


CURVE_POINTS = 400  # per stage, in a run's metrics


class RunReporter:
    """Writes a run's progress and heartbeat in short transactions of their own, and says when it was cancelled.
    A background thread keeps the heartbeat going through phases without steps (loading, evaluation)."""

    def __init__(self, url: str, run_id: int, heartbeat_s: float) -> None:
        self.url, self.run_id, self.heartbeat_s = url, run_id, heartbeat_s
        self.stage = ""
        self.curve: dict[str, list[dict[str, float]]] = {}  # per stage, the logs of each step: training curves
        self.cancelled = False
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"run-{run_id}-heartbeat", daemon=True)

    def __enter__(self) -> "RunReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write({})
            except Exception:  # a database blip must not kill the run; the next beat retries
                log.exception("run %s: heartbeat failed", self.run_id)

    def _write(self, values: dict[str, Any]) -> None:
        with session_scope(self.url) as session:
            row = session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == self.run_id, TrainingRun.status == "running")
                .values(heartbeat_at=utcnow(), **values)
                .returning(TrainingRun.cancel_requested)
            ).first()
            if row is None or row[0]:
                self.cancelled = True

    def set_stage(self, stage: str, **extra: Any) -> None:
        self.stage = stage
        self._write({"progress": {"stage": stage, **extra}})

    def __call__(self, step: int, total: int, logs: dict[str, float]) -> bool:
        """The trainers' progress hook; returns True to stop (cancelled)."""
        stage_elapsed = time.monotonic() - self.started
        eta = stage_elapsed / step * (total - step) if step else None
        progress = {"stage": self.stage, "step": step, "total": total, "eta_s": round(eta, 1) if eta else None}
        curve = self.curve.setdefault(self.stage, [])
        curve.append({"step": step, **logs})
        if len(curve) > CURVE_POINTS:  # keep every other point: the whole run at half the resolution
            del curve[1:-1:2]
        self._write({"progress": progress, "metrics": {"live": {self.stage: logs}, "curve": self.curve}})
        return self.cancelled

    def restart_clock(self) -> None:
        self.started = time.monotonic()


class Cancelled(Exception):
    pass


def execute(url: str, run_id: int, settings: Settings | None = None) -> str:
    """The task body: claim the run, train, evaluate, register, record. Returns the run's final status (or
    "skipped" when the row was not queued: a duplicate or stale message)."""
    from trainers import pipeline_run

    settings = settings or get_settings()
    with session_scope(url) as session:
        if not claim(session, run_id):
            return "skipped"
    staging_parent = settings.artifact_root / "staging"
    with RunReporter(url, run_id, heartbeat_s=max(1.0, settings.run_heartbeat_stale_s / 6)) as reporter:
        try:
            version_ids, metrics = pipeline_run.run(url, run_id, settings, reporter, staging_parent)
        except Exception as exc:
            status = "cancelled" if isinstance(exc, Cancelled) else "failed"
            error = str(exc) if isinstance(exc, Cancelled | InvalidInput | ValueError) else _error(exc)
            log.warning("run %s %s: %s", run_id, status, error)
            _finish(url, run_id, status, error=error)
            return status
        finally:
            artifacts.remove_stale_staging(staging_parent, f"run{run_id}-")
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
        artifacts.remove_stale_staging(settings.artifact_root / "staging", f"run{run.id}-")
        silent = f"no heartbeat since {run.heartbeat_at.isoformat() if run.heartbeat_at else 'start'}"
        if run.attempts >= settings.run_max_attempts or run.cancel_requested:
            run.status, run.finished_at = "failed", now
            run.error = f"worker lost: {silent}, after {run.attempts} attempt(s); nothing was registered"
        else:
            run.status, run.progress = "queued", {"stage": "requeued", "reason": f"worker lost: {silent}"}
            send_after_commit(session, TASK, run.id, queue="gpu")
    session.flush()
    return [run.id for run in stale]


def staging_for(settings: Settings, run_id: int, label: str) -> Path:
    return artifacts.staging_dir(settings.artifact_root / "staging", f"run{run_id}-{label}")
