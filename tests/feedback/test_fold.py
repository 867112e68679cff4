"""The fold (feedback/fold.py): deferred ingest queues, the folder and every reader fold, and the result is the
row that inline folding gives, whatever the order. Deferred folding exists on Postgres only (SQLite folds inline)."""

import random
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select, text

from core.db import get_sessionmaker, session_scope
from core.projects import create_project
from core.settings import Settings
from feedback import fold, texts
from feedback.models import FeedbackEvent, FoldQueue, Generation
from feedback.service import get_generation, ingest, list_generations
from tests.factories import feedback, generation, new_id

# The row's content: not its own ids and times, nor its events' ids (`*_event_pk`: each project stores its own
# copies of the events), but the code those events hold (`texts.code_of_mapping`).
COLUMNS = [
    c.name
    for c in Generation.__table__.columns
    if c.name not in ("id", "project_id", "created_at", "updated_at") and not c.name.endswith("_event_pk")
]


@pytest.fixture
def pg(pg_url: str) -> str:
    """Deferred folding is Postgres-only: SQLite folds inline, so it has no queue to test."""
    return pg_url


def project(db_url: str, excluded_paths: list[str] | None = None) -> int:
    with session_scope(db_url) as session:
        p = create_project(session, f"fold-{uuid.uuid4().hex[:10]}", excluded_paths)
        session.flush()
        return p.id


def send(db_url: str, project_id: int, events: list[dict[str, Any]], mode: str) -> None:
    with session_scope(db_url) as session:
        result = ingest(session, project_id, events, Settings(ingest_fold=mode))  # type: ignore[arg-type]
    assert not result.errors, result.errors


def joined(db_url: str, project_id: int) -> dict[str, dict[str, Any]]:
    """The project's generation rows as stored, without settling first."""
    with session_scope(db_url) as session:
        query = texts.select_with_code(Generation.__table__).where(Generation.project_id == project_id)
        return {
            r["generation_id"]: {c: r[c] for c in COLUMNS} | texts.code_of_mapping(dict(r))
            for r in session.execute(query).mappings()
        }


def queued(db_url: str, project_id: int) -> int:
    with session_scope(db_url) as session:
        return len(session.scalars(select(FoldQueue.id).where(FoldQueue.project_id == project_id)).all())


def story(gid: str) -> list[dict[str, Any]]:
    return [
        generation(gid, 0, completion="    return a + b\n"),
        feedback(gid, "accepted", 2),
        feedback(gid, "edited", 5, final_text="    return a - b\n"),
        feedback(gid, "edited", 9, suffix="2", final_text="    return (a + b) * 2\n"),
        feedback(gid, "rating", 11, score=1, comment="ok"),
    ]


def test_deferred_ingest_queues_and_a_read_folds_it(pg):
    p = project(pg)
    gid = new_id()
    send(pg, p, story(gid), "deferred")
    assert joined(pg, p) == {} and queued(pg, p) == 1  # stored, acknowledged, not folded yet
    with session_scope(pg) as session:
        got = get_generation(session, p, gid)
    assert (got.outcome, got.final_text, got.rating_score) == ("edited", "    return (a + b) * 2\n", 1)
    assert queued(pg, p) == 0 and gid in joined(pg, p)


def test_any_order_and_any_batching_deferred_gives_the_inline_rows(pg):
    """The same events, inline in one batch vs deferred, shuffled, resent and split over many transactions."""
    inline_p, deferred_p = project(pg), project(pg)
    gids = [new_id() for _ in range(6)]
    events = [e for g in gids for e in story(g)]
    send(pg, inline_p, events, "inline")
    shuffled = events + random.Random(7).sample(events, 10)  # resends too
    random.Random(3).shuffle(shuffled)
    for start in range(0, len(shuffled), 4):
        send(pg, deferred_p, shuffled[start : start + 4], "deferred")
    assert queued(pg, deferred_p) > 1
    with session_scope(pg) as session:
        assert fold.settle(session, deferred_p) == len(gids)
    assert joined(pg, deferred_p) == joined(pg, inline_p)


def test_the_folder_step_folds_the_oldest_rows_and_a_fold_twice_changes_nothing(pg):
    p = project(pg)
    gids = [new_id() for _ in range(3)]
    for g in gids:
        send(pg, p, story(g), "deferred")
    with session_scope(pg) as session:
        taken, folded = fold.fold_queued(session, 100)  # other tests' leftovers (none expected) may come along
    assert taken >= 3 and folded >= 3
    first = joined(pg, p)
    assert set(first) == set(gids)
    with session_scope(pg) as session:
        fold.fold(session, {p: set(gids)})
    assert joined(pg, p) == first


def test_a_reader_waits_for_the_folder_that_holds_its_rows(pg):
    """A folder has taken the queue row and not committed: a reader must not answer from the old row."""
    p = project(pg)
    gid = new_id()
    send(pg, p, story(gid)[:1], "inline")  # shown, folded
    send(pg, p, story(gid)[1:3], "deferred")  # accepted then edited: queued
    sessions = get_sessionmaker(pg)
    folder = sessions()
    folder.execute(text("DELETE FROM fold_queue WHERE project_id = :p"), {"p": p})  # claimed, not folded yet
    seen: list[str] = []

    def read() -> None:
        with session_scope(pg) as session:
            seen.append(get_generation(session, p, gid).outcome)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive() and not seen  # blocked on the folder's claim
    fold.fold(folder, {p: {gid}})
    folder.commit()
    folder.close()
    reader.join(timeout=10)
    assert seen == ["edited"]


def test_an_excluded_generation_that_arrives_after_its_feedback_drops_the_feedback_code(pg):
    p = project(pg, excluded_paths=["*.pem", ".env*"])
    gid = new_id()
    send(pg, p, [feedback(gid, "edited", 5, final_text="SECRET_CODE = 1\n")], "deferred")
    send(pg, p, [generation(gid, 0, file_path="config/.env.local")], "deferred")
    with session_scope(pg) as session:
        page = list_generations(session, p)
    (row,) = page.items
    assert row.excluded and row.final_text is None and row.completion is None and row.outcome == "edited"
    with session_scope(pg) as session:
        payloads = session.scalars(select(FeedbackEvent.payload).where(FeedbackEvent.project_id == p)).all()
    assert "SECRET_CODE" not in repr(payloads)
    # Feedback that comes after the (unfolded) excluded generation never stores its code.
    send(pg, p, [feedback(gid, "edited", 9, suffix="2", final_text="MORE_CODE = 2\n")], "deferred")
    with session_scope(pg) as session:
        payloads = session.scalars(select(FeedbackEvent.payload).where(FeedbackEvent.project_id == p)).all()
    assert "MORE_CODE" not in repr(payloads)


def test_secret_counts_add_up_over_the_events(db_url):
    p = project(db_url)
    gid = new_id()
    key = "AKIAIOSFODNN7EXAMPLE"
    send(db_url, p, [generation(gid, 0, completion=f'k = "{key}"\n')], "deferred")
    send(db_url, p, [feedback(gid, "edited", 3, final_text=f'k = "{key}"  # {key}\n')], "deferred")
    with session_scope(db_url) as session:
        got = get_generation(session, p, gid)
    assert got.secrets_redacted == {"aws_access_key": 3}


def test_a_queued_row_left_by_a_killed_process_is_folded_by_the_next_folder(pg):
    """The queue row commits with its events: whoever folds next (here the folder's step) picks it up."""
    p = project(pg)
    gid = new_id()
    send(pg, p, story(gid), "deferred")
    with session_scope(pg) as session:
        waiting = fold.backlog(session)
    assert waiting["rows"] >= 1 and waiting["oldest_s"] is not None
    assert fold.drain(get_sessionmaker(pg), 64) >= 1
    assert joined(pg, p)[gid]["outcome"] == "edited" and queued(pg, p) == 0


def test_the_cli_folds_what_is_queued(pg, monkeypatch):
    from typer.testing import CliRunner

    from api.cli import app
    from core.settings import get_settings

    p = project(pg)
    gid = new_id()
    send(pg, p, story(gid), "deferred")
    monkeypatch.setenv("EDITLOOP_DATABASE_URL", pg)
    get_settings.cache_clear()
    try:
        status = CliRunner().invoke(app, ["db", "fold", "--status"])
        assert status.exit_code == 0 and "fold queue:" in status.output and queued(pg, p) == 1
        done = CliRunner().invoke(app, ["db", "fold"])
        assert done.exit_code == 0 and "folded" in done.output, done.output
    finally:
        get_settings.cache_clear()
    assert queued(pg, p) == 0 and joined(pg, p)[gid]["outcome"] == "edited"


def test_feedback_of_a_generation_excluded_under_globs_since_removed_keeps_no_code(pg):
    from core.projects import Project

    p = project(pg, excluded_paths=["*.pem"])
    gid = new_id()
    send(pg, p, [generation(gid, 0, file_path="keys/server.pem")], "deferred")
    with session_scope(pg) as session:
        session.get(Project, p).excluded_paths = []  # type: ignore[union-attr]
    send(pg, p, [feedback(gid, "edited", 5, final_text="PRIVATE = 1\n")], "deferred")
    with session_scope(pg) as session:
        got = get_generation(session, p, gid)
        payloads = session.scalars(select(FeedbackEvent.payload).where(FeedbackEvent.project_id == p)).all()
    assert got.excluded and got.final_text is None and got.outcome == "edited"
    assert "PRIVATE" not in repr(payloads)


def test_a_fold_of_thousands_of_generations_holds_a_bounded_number_of_locks(pg):
    """The shared lock table holds ~64 locks per connection on a stock server: a fold's locks must not grow with it."""
    p = project(pg)
    gids = [new_id() for _ in range(3000)]
    send(pg, p, [generation(g) for g in gids], "deferred")
    with session_scope(pg) as session:
        assert fold.settle(session, p) == len(gids)
        held = session.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        ).scalar_one()
    assert 0 < held <= fold.LOCK_BUCKETS
    assert set(joined(pg, p)) == set(gids)


def test_lock_buckets_are_sorted_distinct_and_bounded_for_any_claims():
    ids = {2: [f"g{i}" for i in range(5000)], 1: ["a", "b"]}
    buckets = fold.lock_buckets(ids)
    assert buckets == sorted(set(buckets))
    assert len(buckets) <= fold.LOCK_BUCKETS and all(0 <= b < fold.LOCK_BUCKETS for b in buckets)
    # The same generation maps to the same bucket in every fold, whatever else the fold holds.
    assert set(fold.lock_buckets({1: ["a"]})) <= set(buckets)
