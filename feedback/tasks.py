"""Thin Celery wrappers over feedback functions; tests call the functions directly."""

from sqlalchemy import text

from core.db import session_scope
from core.queue import celery_app
from core.settings import get_settings


def build_project_rows(url: str, project_id: int) -> int | None:
    """Build a project's rows in one transaction. Concurrent builds of one project would read the same
    watermark and do the same work: on Postgres the second one skips (SQLite serializes writers anyway).
    Returns the build id, or None when skipped."""
    from feedback.rows import build_rows

    with session_scope(url) as session:
        if session.get_bind().dialect.name == "postgresql":
            got = session.scalar(
                text("SELECT pg_try_advisory_xact_lock(hashtextextended('build:' || CAST(:p AS text), 0))"),
                {"p": project_id},
            )
            if not got:
                return None
        return build_rows(session, project_id).id


@celery_app.task(name="feedback.build_rows")
def build_rows_task(project_id: int) -> int | None:
    return build_project_rows(get_settings().sqlalchemy_url, project_id)
