"""The bulk writer's JSON document and its statement on the psycopg connection, on Postgres and on SQLite."""

from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pytest
from sqlalchemy import Table, select

from core.db import get_engine, session_scope
from core.projects import create_project
from feedback.models import FeedbackEvent
from feedback.service import _WRITE_EVENTS

_EVENTS = cast(Table, FeedbackEvent.__table__)


def _row(project_id: int, event_id: str) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "event_id": event_id,
        "type": "accepted",
        "generation_id": "g1",
        "occurred_at": datetime(2026, 11, 24, 10, 0, tzinfo=UTC),
        "received_at": datetime(2026, 11, 24, 10, 0, 1, tzinfo=UTC),
        "payload": {"accepted_text": "x = 1"},
        "secrets": None,
        "excluded": False,
    }


def test_document_holds_exactly_the_writer_columns() -> None:
    row = _row(1, "e1")
    as_json = orjson.loads(orjson.dumps(row))
    assert orjson.loads(_WRITE_EVENTS.document([row])) == [as_json]
    extra = dict(row, note="not a column")
    assert orjson.loads(_WRITE_EVENTS.document([row, extra])) == [as_json, as_json]  # extra keys dropped
    missing = dict(row)
    del missing["payload"]
    with pytest.raises(KeyError):  # never a silent NULL
        _WRITE_EVENTS.document([row, missing])


def test_write_returns_what_it_stored_and_skips_conflicts(db_url: str) -> None:
    writer = _WRITE_EVENTS  # ingest's writer: ON CONFLICT DO NOTHING RETURNING event_id
    with session_scope(db_url) as session:
        project_id = create_project(session, "bulk-writer").id
    with session_scope(db_url) as session:
        assert sorted(writer.write(session, [_row(project_id, "e1"), _row(project_id, "e2")])) == ["e1", "e2"]
    with session_scope(db_url) as session:
        assert writer.write(session, [_row(project_id, "e2"), _row(project_id, "e3")]) == ["e3"]
        assert writer.write(session, []) == []
    with get_engine(db_url).connect() as conn:
        stored = conn.execute(select(_EVENTS.c.event_id).where(_EVENTS.c.project_id == project_id)).scalars().all()
    assert sorted(stored) == ["e1", "e2", "e3"]
