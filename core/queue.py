"""The Celery app and the outbox that sends messages only after the transaction that caused them commits.

Messages are nudges: every task takes ids, reads the row that holds the state, and claims work with a
conditional update, so a lost or duplicated message changes nothing."""

from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from core import logs
from core.settings import Settings, get_settings

TASK_MODULES = ["feedback.tasks", "trainers.tasks", "trainers.rights_tasks"]
celery_app = Celery("editloop")


def configure(settings: Settings | None = None) -> Celery:
    """Point the app at the settings' broker; the worker, beat and every sender call this once."""
    settings = settings or get_settings()
    if celery_app.conf.broker_url not in (None, settings.celery_broker_url):
        # Pooled connections would keep talking to the previous broker.
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
    celery_app.conf.update(
        broker_url=settings.celery_broker_url,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_default_queue="default",
        task_routes={"trainers.run_training": {"queue": "gpu"}},
        # A task is acknowledged when it ends, so a worker killed mid-task leaves it to be redelivered; the run
        # row decides whether redelivered work is done again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        # Redis redelivers an unacknowledged task after the visibility timeout: it must outlast the longest task.
        # (The SQLite transport hands these options to create_engine, so it gets none.)
        broker_transport_options=(
            {"visibility_timeout": settings.task_time_limit_s + 600}
            if settings.celery_broker_url.startswith(("redis", "rediss"))
            else {}
        ),
        beat_schedule={
            "refresh-projects": {"task": "trainers.schedule_tick", "schedule": settings.refresh_interval_s},
            "data-rights": {"task": "rights.tick", "schedule": settings.refresh_interval_s},
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
        worker_hijack_root_logger=False,
    )
    celery_app.conf.imports = TASK_MODULES
    logs.connect_celery()  # the request id travels with the messages a request sends
    return celery_app


def send_after_commit(session: Session, task: str, *args: Any, queue: str | None = None) -> None:
    """Queue a message to send when the session's transaction commits; a rollback drops it."""
    session.info.setdefault("outbox", []).append((task, args, queue))


@event.listens_for(Session, "after_commit")
def _send_outbox(session: Session) -> None:
    for task, args, queue in session.info.pop("outbox", []):
        celery_app.send_task(task, args=list(args), queue=queue)


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop("outbox", None)
