"""Thin Celery wrappers over feedback functions; tests call the functions directly."""

import os
import socket

from sqlalchemy import text

from core.db import session_scope
from core.queue import celery_app, send_after_commit
from core.settings import get_settings


def build_project_rows(url: str, project_id: int, partitions: int = 0) -> int | None:
    """Build a project's rows in one transaction. Concurrent builds of one project would read the same
    watermark and do the same work: on Postgres the second one skips (SQLite serializes writers anyway).
    Returns the build id, or None when skipped. With `partitions` > 1 on Postgres, plans a partitioned build
    instead and sends one message per partition to the `default` queue (None: the build finishes later)."""
    from feedback.partitions import pending, plan_build
    from feedback.rows import build_rows

    with session_scope(url) as session:
        if session.get_bind().dialect.name == "postgresql":
            if partitions > 1:
                plan_build(session, project_id, partitions)
                for _plan, partition_id in pending(session, project_id):  # a stale plan's are nudged again too
                    send_after_commit(session, "feedback.build_partition", partition_id)
                return None
            got = session.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtextextended('build:' || CAST(:p AS text), 0))"),
                {"p": project_id},
            )
            if not got:
                return None
        return build_rows(session, project_id).id


@celery_app.task(name="feedback.build_rows")
def build_rows_task(project_id: int) -> int | None:
    settings = get_settings()
    return build_project_rows(settings.sqlalchemy_url, project_id, settings.rows_partitions)


@celery_app.task(name="feedback.build_partition")
def build_partition_task(partition_id: int) -> bool:
    from feedback.partitions import build_partition

    return build_partition(get_settings().sqlalchemy_url, partition_id, f"{socket.gethostname()}:{os.getpid()}")
