"""Generations per day, version and outcome (`generation_days`), refreshed incrementally: a refresh recounts only the
days of generations that changed since the last one (found through `ix_generations_project_updated`), from
`ix_generations_project_shown`. A day is the UTC date a generation was shown; pending ones (no `generation` event
yet) have none and are left out. The caller commits."""

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.db import utcnow
from feedback.fold import settle
from feedback.models import GenerationDay, GenerationDayMark

# A fold that began before a refresh may commit after it, with an `updated_at` before its mark: each refresh looks
# this far behind the previous mark, so such a generation is recounted by the next one.
OVERLAP = timedelta(minutes=5)

_DAY = {"postgresql": "(g.shown_at AT TIME ZONE 'UTC')::date", "sqlite": "date(g.shown_at)"}
_TOUCHED = """SELECT min(g.shown_at), max(g.shown_at) FROM generations g
WHERE g.project_id = :p AND g.updated_at >= :since AND g.shown_at IS NOT NULL"""
_RECOUNT = """INSERT INTO generation_days
    (project_id, day, model, outcome, generations, distance_n, distance_sum, distance_sumsq)
SELECT :p, {day}, coalesce(g.model, ''), g.outcome, count(*), count(g.edit_distance),
       coalesce(sum(g.edit_distance), 0), coalesce(sum(g.edit_distance * g.edit_distance), 0)
FROM generations g
WHERE g.project_id = :p AND g.shown_at >= :lo AND g.shown_at < :hi
GROUP BY 2, 3, 4"""


def _midnight(moment: datetime) -> datetime:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.combine(moment.astimezone(UTC).date(), datetime.min.time(), UTC)


def refresh(session: Session, project_id: int) -> None:
    """Bring the project's rows of `generation_days` up to date (what is still queued for the fold first)."""
    settle(session, project_id)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":  # one refresh per project at a time; the others wait, then find little to do
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('generation_days'), :p)"), {"p": project_id})
    mark = session.get(GenerationDayMark, project_id, populate_existing=True)
    now = utcnow()
    since = mark.refreshed_at - OVERLAP if mark is not None else datetime(1970, 1, 1, tzinfo=UTC)
    params: dict[str, Any] = {
        "p": project_id,
        "since": since if dialect == "postgresql" else since.replace(tzinfo=None),
    }
    first, last = session.execute(text(_TOUCHED), params).one()
    if first is not None:
        if isinstance(first, str):  # SQLite
            first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
        lo, hi = _midnight(first), _midnight(last) + timedelta(days=1)
        bounds = {"lo": lo, "hi": hi} if dialect == "postgresql" else {"lo": _naive(lo), "hi": _naive(hi)}
        session.query(GenerationDay).filter(
            GenerationDay.project_id == project_id, GenerationDay.day >= lo.date(), GenerationDay.day < hi.date()
        ).delete(synchronize_session=False)
        session.execute(text(_RECOUNT.format(day=_DAY.get(dialect, _DAY["sqlite"]))), {"p": project_id, **bounds})
    if mark is None:
        session.add(GenerationDayMark(project_id=project_id, refreshed_at=now))
    else:
        mark.refreshed_at = now
    session.flush()


def _naive(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def days(session: Session, project_id: int, first: date) -> list[GenerationDay]:
    """The rows from `first` on, oldest first (call `refresh` before)."""
    return list(
        session.query(GenerationDay)
        .filter(GenerationDay.project_id == project_id, GenerationDay.day >= first)
        .order_by(GenerationDay.day, GenerationDay.model, GenerationDay.outcome)
    )
