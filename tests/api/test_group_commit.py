"""Group commit: concurrent requests share transactions, and each still gets its own exact answer (both backends)."""

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.group_commit import GroupCommitter
from core.db import get_sessionmaker, session_scope
from core.projects import Principal, Project, Role, create_project
from core.settings import Settings
from feedback import service
from feedback.models import FeedbackEvent
from feedback.scrub import scrub_text
from tests.conftest import TEST_LIMITS, Server, Tenant, make_tenant, start_server
from tests.factories import feedback, generation, new_id

GITHUB_TOKEN = "ghp_" + "x7Kp2mQ9vR4tW8zB1nC5dF3gH6jL0sY2aE4u"  # fake, of the right shape


def settings_for(db_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {**TEST_LIMITS, **overrides}
    return Settings(database_url=db_url, data_dir=data_dir, **values)


def post_all(server: Server, requests: list[tuple[str, list[dict[str, Any]]]]) -> list[httpx.Response]:
    """POST every (key, events) at once, each on its own connection."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(requests) + 1)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {key}"})
                    for key, events in requests
                )
            )

    return asyncio.run(run())


def stored_ids(db_url: str, tenant: Tenant) -> list[str]:
    with session_scope(db_url) as session:
        project_id = session.scalar(select(Project.id).where(Project.name == tenant.name))
        return list(session.scalars(select(FeedbackEvent.event_id).where(FeedbackEvent.project_id == project_id)))


@pytest.fixture
def group_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(submissions, committed) of every transaction the in-process servers run."""
    sizes: list[tuple[int, bool]] = []
    transaction = GroupCommitter._transaction

    def spy(self: GroupCommitter, group: list[Any]) -> Any:
        try:
            results = transaction(self, group)
        except Exception:
            sizes.append((len(group), False))
            raise
        sizes.append((len(group), True))
        return results

    monkeypatch.setattr(GroupCommitter, "_transaction", spy)
    return sizes


@pytest.fixture(scope="module")
def groups_of_7(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose groups close when they hold 7 events (the window is long, and the first request waits for it
    even with the database idle): 7 one-event requests sent together share one transaction, however slowly they
    arrive."""
    settings = settings_for(
        db_url,
        tmp_path_factory.mktemp("data"),
        group_commit_wait_ms=30_000,
        group_commit_max_events=7,
        group_commit_eager=False,
    )
    srv, thread, url = start_server(settings)
    yield Server(url=url, db_url=db_url, settings=settings)
    srv.should_exit = True
    thread.join(timeout=10)


def test_200_concurrent_single_events_each_stored_once(server, tenant, group_sizes):
    gids = [new_id() for _ in range(200)]
    responses = post_all(server, [(tenant.ingest_key, [generation(gid)]) for gid in gids])
    assert [r.status_code for r in responses] == [200] * 200, [r.text for r in responses if r.status_code != 200]
    assert all(
        r.json() == {"received": 1, "stored": 1, "duplicates": 0, "errors": [], "secrets_redacted": {}}
        for r in responses
    )
    assert sorted(stored_ids(server.db_url, tenant)) == sorted(f"{gid}:gen" for gid in gids)
    assert max(n for n, _ in group_sizes) > 1, "no transaction was shared"


def test_the_same_event_from_concurrent_requests_is_stored_once(server, tenant):
    gid = new_id()
    responses = post_all(server, [(tenant.ingest_key, [generation(gid)])] * 30)
    counts = sorted((r.json()["stored"], r.json()["duplicates"]) for r in responses)
    assert counts == [(0, 1)] * 29 + [(1, 0)]
    assert stored_ids(server.db_url, tenant) == [f"{gid}:gen"]
    assert tenant.admin.get(f"/v1/generations/{gid}").json()["event_count"] == 1


def test_overlapping_requests_each_count_their_own_events(server, tenant):
    shared = new_id()
    own = [new_id() for _ in range(50)]
    responses = post_all(server, [(tenant.ingest_key, [generation(gid), generation(shared)]) for gid in own])
    results = [r.json() for r in responses]
    assert sorted((r["stored"], r["duplicates"]) for r in results) == [(1, 1)] * 49 + [(2, 0)]
    assert len(stored_ids(server.db_url, tenant)) == 51


def test_invalid_events_in_a_shared_transaction_stay_with_their_request(groups_of_7, group_sizes):
    tenant = make_tenant(groups_of_7)
    good = [new_id() for _ in range(5)]
    mixed, secret = new_id(), new_id()
    requests = [(tenant.ingest_key, [generation(gid)]) for gid in good]
    requests.append((tenant.ingest_key, [generation(mixed), feedback(mixed, "rating", 1, score=7)]))
    requests.append((tenant.ingest_key, [feedback(new_id(), "edited", 1)]))  # no final_text: nothing valid
    requests.append((tenant.ingest_key, [generation(secret, completion=f'TOKEN = "{GITHUB_TOKEN}"\n')]))
    responses = post_all(groups_of_7, requests)

    assert [r.json()["stored"] for r in responses[:5]] == [1] * 5
    assert all(r.json()["errors"] == [] and r.json()["secrets_redacted"] == {} for r in responses[:5])
    body = responses[5].json()
    assert (body["stored"], body["duplicates"]) == (1, 0)
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "events[1].score")]
    assert responses[6].status_code == 422 and "events[0].final_text" in responses[6].json()["detail"]
    assert responses[7].json()["secrets_redacted"] == {"github_token": 1}
    assert len(stored_ids(groups_of_7.db_url, tenant)) == 7
    assert (7, True) in group_sizes  # all seven valid submissions in one transaction


def test_a_failing_group_falls_back_to_one_transaction_per_request(groups_of_7, group_sizes, monkeypatch):
    ok, broken = make_tenant(groups_of_7), make_tenant(groups_of_7)
    with session_scope(groups_of_7.db_url) as session:
        broken_id = session.scalar(select(Project.id).where(Project.name == broken.name))
    store = service.store

    def failing_store(session: Any, project_id: int, *args: Any) -> service.Written:
        if project_id == broken_id:
            raise RuntimeError("injected failure")
        return store(session, project_id, *args)

    monkeypatch.setattr(service, "store", failing_store)
    gids = [new_id() for _ in range(6)]
    requests = [(ok.ingest_key, [generation(gid)]) for gid in gids[:3]]
    requests.append((broken.ingest_key, [generation(new_id())]))
    requests += [(ok.ingest_key, [generation(gid)]) for gid in gids[3:]]
    responses = post_all(groups_of_7, requests)

    assert [r.status_code for r in responses] == [200, 200, 200, 500, 200, 200, 200]
    assert all(r.json()["stored"] == 1 for i, r in enumerate(responses) if i != 3)
    assert sorted(stored_ids(groups_of_7.db_url, ok)) == sorted(f"{gid}:gen" for gid in gids)
    assert stored_ids(groups_of_7.db_url, broken) == []
    assert group_sizes[0] == (7, False) and sorted(group_sizes[1:]) == [(1, False)] + [(1, True)] * 6


def test_requests_waiting_when_the_server_stops_are_answered(db_url, tmp_path_factory):
    settings = settings_for(
        db_url, tmp_path_factory.mktemp("data"), group_commit_wait_ms=3000, group_commit_eager=False
    )
    srv, thread, url = start_server(settings)
    server = Server(url=url, db_url=db_url, settings=settings)
    tenant = make_tenant(server)
    gids = [new_id() for _ in range(20)]
    answers: list[httpx.Response] = []

    def send(gid: str) -> None:
        answers.append(tenant.ingest.post("/v1/events", json={"events": [generation(gid)]}))

    clients = [threading.Thread(target=send, args=(gid,)) for gid in gids]
    for client in clients:
        client.start()
    committer: GroupCommitter = srv.config.app.state.group_commit
    deadline = time.monotonic() + 10
    while committer.waiting < len(gids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert committer.waiting == len(gids) and not answers, "not all waiting when stopped: the test proves nothing"
    srv.should_exit = True  # uvicorn finishes the requests in flight, then stops the app (and its writers)
    for client in clients:
        client.join(timeout=30)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [r.status_code for r in answers] == [200] * 20
    assert sorted(stored_ids(db_url, tenant)) == sorted(f"{gid}:gen" for gid in gids)


@pytest.mark.parametrize("writers", [1, 2])
def test_stopping_answers_queued_submissions_without_waiting_out_the_window(db_url, writers):
    with session_scope(db_url) as session:
        project_id = create_project(session, f"p-{new_id()}").id
    principal = Principal(project_id=project_id, role=Role.ingest, key_id=0)
    settings = settings_for(db_url, Path("unused"))
    batches = [service.validate([generation(new_id())], settings) for _ in range(10)]

    async def run() -> list[Any]:
        async with GroupCommitter(get_sessionmaker(db_url), 1000, 60, max_queued=4, writers=writers) as committer:
            waiting = [asyncio.create_task(committer.submit(principal, batch)) for batch in batches]
            await asyncio.sleep(0.2)  # four are queued, six wait for room in the queue
        started = time.monotonic()
        results = await asyncio.gather(*waiting)
        assert time.monotonic() - started < 5
        return results

    started = time.monotonic()
    results = asyncio.run(run())
    assert time.monotonic() - started < 10, "stopping waited out the 60 s window"
    assert [r.stored for r in results] == [1] * 10
    with session_scope(db_url) as session:
        count = session.scalar(
            select(func.count()).select_from(FeedbackEvent).where(FeedbackEvent.project_id == project_id)
        )
    assert count == 10


def test_strings_too_short_to_scan_cannot_hold_a_secret():
    # service skips scrub_text on strings shorter than MIN_SECRET_CHARS: the shortest detectable secret must not be.
    assert scrub_text("://:" + "pw" + "@")[1] == {"connection_string_password": 1}
    assert len("://:pw@") == service.MIN_SECRET_CHARS


def test_a_zero_window_commits_each_request_alone(db_url, group_sizes):
    with session_scope(db_url) as session:
        project_id = create_project(session, f"p-{new_id()}").id
    principal = Principal(project_id=project_id, role=Role.ingest, key_id=0)
    settings = settings_for(db_url, Path("unused"))
    gid = new_id()
    batches = [service.validate([generation(gid)], settings) for _ in range(5)]

    async def run() -> list[Any]:
        async with GroupCommitter(get_sessionmaker(db_url), 1000, max_wait_s=0, max_queued=10) as committer:
            return await asyncio.gather(*(committer.submit(principal, batch) for batch in batches))

    results = asyncio.run(run())
    assert sorted(r.stored for r in results) == [0, 0, 0, 0, 1]
    assert group_sizes == [(1, True)] * 5


def test_transient_errors_are_recognized_from_sqlalchemy_and_from_psycopg() -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    from api.group_commit import transient

    deadlock = psycopg.errors.DeadlockDetected("deadlock detected")
    assert transient(deadlock)  # deferred ingest runs on the DBAPI connection: psycopg's own exception
    assert transient(OperationalError("INSERT ...", {}, deadlock))
    assert transient(psycopg.errors.SerializationFailure("could not serialize access"))
    assert transient(OperationalError("INSERT ...", {}, Exception("database is locked")))
    assert not transient(psycopg.errors.UniqueViolation("duplicate key"))
    assert not transient(ValueError("no"))
