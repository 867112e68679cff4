"""Thin Celery wrappers over trainers/rights.py; tests call the functions directly."""

from core.queue import celery_app
from core.settings import get_settings
from trainers import rights


@celery_app.task(name="rights.process_deletion")
def process_deletion_task(request_id: int) -> str:
    """A duplicate message finds the request locked by the first (it skips) or finished."""
    return rights.process(get_settings().sqlalchemy_url, request_id)


@celery_app.task(name="rights.tick")
def rights_tick_task() -> dict[str, list[int]]:
    return rights.tick(get_settings().sqlalchemy_url)
