"""What a claimed run carries while it trains: its context, its reporter (progress, heartbeat, cancellation), the
exception that ends it when cancelled, and its staging directories. trainers.runs (claim, finish, reap) and
trainers.execute (the training itself) both import it; neither imports the other's internals."""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update

from core import artifacts
from core.db import session_scope, utcnow
from core.settings import Settings
from trainers.models import TrainingRun

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised between stages when the run was cancelled; nothing of the run is registered."""


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


@dataclass
class RunContext:
    """What the training of one run needs to know, read in one short transaction before any model is loaded."""

    url: str
    settings: Settings
    run_id: int
    project_id: int
    project_name: str
    base_model: str
    base_revision: str | None
    auto_promote: str
    snapshot: Any  # a detached DatasetSnapshot
    reporter: RunReporter


def staging_for(settings: Settings, run_id: int, label: str) -> Path:
    """A fresh staging directory of the run; `remove_staging` finds it by the run's id."""
    return artifacts.staging_dir(settings.artifact_root / "staging", f"run{run_id}-{label}")


def remove_staging(settings: Settings, run_id: int) -> int:
    """Remove the run's staging directories (only once nothing of the run is still writing to them)."""
    return artifacts.remove_stale_staging(settings.artifact_root / "staging", f"run{run_id}-")
