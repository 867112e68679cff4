"""POST /v1/events through real HTTP, on Postgres and on SQLite."""

import random
import socket
from select import select as wait_readable

import httpx
import orjson
import pytest
from sqlalchemy import select

from core.db import session_scope
from feedback.models import FeedbackEvent
from tests.factories import feedback, generation, new_id


def post(client: httpx.Client, events: list[dict]) -> httpx.Response:
    return client.post("/v1/events", json={"events": events})


def get(tenant, gid: str) -> dict:
    r = tenant.admin.get(f"/v1/generations/{gid}")
    assert r.status_code == 200, r.text
    return r.json()


def test_generation_and_edit_join(tenant):
    gid = new_id()
    r = post(
        tenant.ingest,
        [
            generation(gid, language="python", user="u1"),
            feedback(gid, "edited", 5, final_text="    return int(a) + int(b)\n"),
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 2, "stored": 2, "duplicates": 0, "errors": [], "secrets_redacted": {}}
    g = get(tenant, gid)
    assert g["outcome"] == "edited"
    assert g["prompt"] == "def add(a, b):" and g["completion"] == "    return a + b\n"
    assert g["final_text"] == "    return int(a) + int(b)\n"
    assert 0 < g["edit_distance"] < 1
    assert g["event_count"] == 2 and g["model"] == "base" and g["user"] == "u1"


def test_accept_reject_and_partial_accept(tenant):
    a, r_, p = new_id(), new_id(), new_id()
    post(
        tenant.ingest,
        [
            generation(a),
            feedback(a, "accepted", 1),
            generation(r_),
            feedback(r_, "rejected", 1, reason="wrong"),
            generation(p),
            feedback(p, "accepted", 1, accepted_text="    return a"),
        ],
    )
    assert (get(tenant, a)["outcome"], get(tenant, a)["final_text"], get(tenant, a)["edit_distance"]) == (
        "accepted",
        "    return a + b\n",
        0.0,
    )
    rejected = get(tenant, r_)
    assert (rejected["outcome"], rejected["final_text"], rejected["reject_reason"]) == (
        "rejected",
        None,
        "wrong",
    )
    assert get(tenant, p)["final_text"] == "    return a"


def test_resending_changes_nothing_and_counts_duplicates(tenant):
    gid = new_id()
    batch = [generation(gid), feedback(gid, "accepted", 1), feedback(gid, "rating", 2, score=1)]
    assert post(tenant.ingest, batch).json()["stored"] == 3
    before = get(tenant, gid)
    again = post(tenant.ingest, batch).json()
    assert (again["stored"], again["duplicates"]) == (0, 3)
    assert get(tenant, gid) == before
    # The same event twice within one batch is stored once.
    other = new_id()
    twice = post(tenant.ingest, [generation(other), generation(other)]).json()
    assert (twice["stored"], twice["duplicates"]) == (1, 1)


def _comparable(g: dict) -> dict:
    return {k: v for k, v in g.items() if k not in ("created_at", "updated_at")}


def test_any_order_and_any_repetition_converges(tenant_factory):
    gid = "g-order"
    events = [
        generation(gid, 0),
        feedback(gid, "accepted", 1),
        feedback(gid, "edited", 3, "-1", final_text="    return a - b\n"),
        feedback(gid, "edited", 7, "-2", final_text="    return b + a\n"),
        feedback(gid, "rejected", 5),
        feedback(gid, "rating", 4, "-1", score=-1),
        feedback(gid, "rating", 9, "-2", score=0.5, comment="ok"),
    ]
    rng = random.Random(7)
    seen = []
    for trial in range(4):
        tenant = tenant_factory()
        shuffled = events + rng.sample(events, 3)  # with resends
        rng.shuffle(shuffled)
        if trial % 2:
            for e in shuffled:  # one request per event
                assert post(tenant.ingest, [e]).status_code == 200
        else:
            assert post(tenant.ingest, shuffled).status_code == 200
        seen.append(_comparable(get(tenant, gid)))
    assert all(s == seen[0] for s in seen)
    final = seen[0]
    # The later edit wins whatever the order; ratings too; an edit outranks any decision.
    assert final["outcome"] == "edited" and final["final_text"] == "    return b + a\n"
    assert (final["rating_score"], final["rating_comment"], final["event_count"]) == (0.5, "ok", 7)


def test_feedback_before_generation_is_kept_and_joined(tenant):
    gid = new_id()
    post(tenant.ingest, [feedback(gid, "edited", 5, final_text="x = 1\n")])
    pending = get(tenant, gid)
    assert (pending["outcome"], pending["completion"], pending["final_text"]) == ("edited", None, "x = 1\n")
    assert pending["edit_distance"] is None
    post(tenant.ingest, [generation(gid, completion="x = 2\n")])
    joined = get(tenant, gid)
    assert joined["completion"] == "x = 2\n" and joined["edit_distance"] == pytest.approx(1 / 6)


def test_a_bad_event_does_not_sink_the_batch(tenant):
    good = new_id()
    events = [
        generation(good),
        {"event_id": "e1", "type": "teleport", "generation_id": "g", "occurred_at": "2026-01-01T00:00:00Z"},
        feedback(good, "edited", 1),  # final_text missing
        feedback(good, "rating", 1, score=7),
        generation(new_id(), occurred_at="3026-01-01T00:00:00Z"),
        generation(new_id(), occurred_at="1970-01-01T00:00:00Z"),
        generation(new_id(), occurred_at="yesterday"),
        generation(new_id(), completion="a\x00b"),
        generation(new_id(), prompt=None),
        generation(new_id(), colour="blue"),
        "not an object",
        feedback(good, "accepted", 2),
    ]
    r = post(tenant.ingest, events)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stored"] == 2
    errors = {e["index"]: (e["field"], e["detail"]) for e in body["errors"]}
    assert set(errors) == set(range(1, 11))
    assert errors[1][0] == "events[1].type" and "teleport" in errors[1][1]
    assert errors[2][0] == "events[2].final_text"
    assert errors[3][0] == "events[3].score"
    assert errors[4][0] == "events[4].occurred_at" and "future" in errors[4][1]
    assert errors[5][0] == "events[5].occurred_at" and "before" in errors[5][1]
    assert errors[6][0] == "events[6].occurred_at"
    assert errors[7] == ("events[7].completion", "contains a NUL character, which cannot be stored")
    assert "exactly one of" in errors[8][1]
    assert errors[9][0] == "events[9].colour"
    assert errors[10] == ("events[10]", "must be a JSON object")
    assert body["errors"][0]["event_id"] == "e1"
    assert get(tenant, good)["outcome"] == "accepted"


def test_all_invalid_is_422_and_stores_nothing(tenant, server):
    gid = new_id()
    r = post(tenant.ingest, [feedback(gid, "rating", 1, score=3), feedback(gid, "edited", 1)])
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_input" and r.json()["detail"].startswith("events[0].score")
    assert tenant.admin.get(f"/v1/generations/{gid}").status_code == 404


def test_malformed_bodies_are_4xx(tenant):
    cases = [
        (b"{not json", 400),
        (b'{"events": [{"event_id": "\xff"}]}', 400),  # not UTF-8
        (b'{"events": ["\\ud800"]}', 400),  # a lone surrogate
        (b"[]", 422),
        (b'{"events": {}}', 422),
        (b'{"events": [], "extra": 1}', 422),
        (b"", 400),
    ]
    for raw, status in cases:
        r = tenant.ingest.post("/v1/events", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == status, (raw, r.text)
        assert r.json()["error"] in ("invalid_json", "invalid_input")


def test_limits(tenant, server):
    limits = server.settings
    too_many = [generation(new_id()) for _ in range(limits.max_events_per_batch + 1)]
    r = post(tenant.ingest, too_many)
    assert r.status_code == 422 and "exceeds the limit" in r.json()["detail"]

    long_text = generation(new_id(), completion="x" * (limits.max_text_chars + 1))
    r = post(tenant.ingest, [long_text, generation(new_id())])
    assert r.status_code == 200
    assert r.json()["errors"][0]["field"] == "events[0].completion"
    assert "exceeds" in r.json()["errors"][0]["detail"]

    huge = orjson.dumps({"events": [generation(new_id(), completion="y" * (limits.max_request_bytes + 10))]})
    r = tenant.ingest.post("/v1/events", content=huge)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_oversized_chunked_body_is_refused_before_it_is_read_whole(tenant, server):
    """A chunked body has no Content-Length: the server must answer 413 as soon as the limit is crossed,
    while the client is still sending, not after reading everything."""
    limit = server.settings.max_request_bytes
    host, port = server.url.removeprefix("http://").split(":")
    chunk = b" " * 65536
    sent, response = 0, b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tenant.ingest_key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        while sent < limit * 20:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break  # closed on us: refused
            sent += len(chunk)
            readable, _, _ = wait_readable([sock], [], [], 0.05)
            if readable:
                response = sock.recv(65536)
                break
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b"payload_too_large" in response
    assert sent < limit * 4


def test_raw_log_holds_one_row_per_event(tenant, server):
    gid = new_id()
    batch = [generation(gid), feedback(gid, "edited", 2, final_text="pass\n")]
    post(tenant.ingest, batch)
    post(tenant.ingest, batch)
    with session_scope(server.db_url) as session:
        rows = session.scalars(select(FeedbackEvent).where(FeedbackEvent.generation_id == gid)).all()
    assert sorted(r.event_id for r in rows) == sorted(e["event_id"] for e in batch)
    edited = next(r for r in rows if r.type == "edited")
    assert edited.payload == {"final_text": "pass\n"}


def _batch(*events: dict) -> bytes:
    return orjson.dumps({"events": list(events)})


def _entrance_cases() -> dict[str, object]:
    """Request bodies (a function of a fresh generation id, so each entrance stores its own) and what they test."""
    secret = "AKIA" + "IOSFODNN7EXAMPLE"
    return {
        "stored": lambda gid: _batch(generation(gid), feedback(gid, "edited", 1, final_text=f"key = '{secret}'\n")),
        "partly invalid": lambda gid: _batch(generation(gid), {"event_id": "e-bad", "type": "rating"}),
        "all invalid": lambda gid: _batch({"event_id": "x", "type": "bogus", "generation_id": gid}),
        "not json": lambda gid: b'{"events": [',
        "not utf-8": lambda gid: b'{"events": ["\xff"]}',
        "wrong shape": lambda gid: b"[]",
        "unknown field": lambda gid: orjson.dumps({"events": [], "extra": 1}),
        "too many events": lambda gid: _batch(*[generation(new_id()) for _ in range(51)]),
        "no key": lambda gid: _batch(generation(gid)),
        "unknown key": lambda gid: _batch(generation(gid)),
        "too large": lambda gid: _batch(generation(gid, completion="x" * 300_000)),
    }


@pytest.mark.parametrize("case", list(_entrance_cases()))
def test_both_entrances_answer_alike(tenant, server, monkeypatch, case):
    """A body with a Content-Length is answered by api.routes.events.ingest_directly ahead of FastAPI; a chunked
    one by the FastAPI route. Both must give the same status, headers that matter, and body."""
    import api.routes.events as events_module

    handled: list[bool] = []
    direct = events_module.ingest_directly

    async def counted(*args):
        handled.append(await direct(*args))
        return handled[-1]

    monkeypatch.setattr(events_module, "ingest_directly", counted)
    make = _entrance_cases()[case]
    headers = {"Authorization": "Bearer wrong"} if case == "unknown key" else {}
    answers = {}
    for entrance in ("content-length", "chunked"):
        body = make(new_id())
        content = body if entrance == "content-length" else iter([body[: len(body) // 2], body[len(body) // 2 :]])
        with httpx.Client(base_url=server.url, timeout=30) as client:
            key = {} if case == "no key" else {"Authorization": f"Bearer {tenant.ingest_key}"}
            r = client.post("/v1/events", content=content, headers={**key, **headers})
        assert ("content-length" in r.request.headers) == (entrance == "content-length")
        answer = r.json()
        if case == "too large":  # a declared length is refused before reading, a chunked body once it crosses
            assert answer["detail"].startswith("body: 300" if entrance == "content-length" else "body: more than")
            answer.pop("detail")
        answers[entrance] = (r.status_code, r.headers.get("content-type"), r.headers.get("www-authenticate"), answer)
    assert handled == [True, False]  # the first went the direct way, the chunked one declined to the route
    assert answers["content-length"] == answers["chunked"]
    status = answers["chunked"][0]
    expected = {"stored": 200, "partly invalid": 200, "not json": 400, "not utf-8": 400, "no key": 401}
    expected |= {"unknown key": 401, "too large": 413}
    assert status == expected.get(case, 422), answers
