"""Continue's HTTP data destination, posted through real HTTP with payloads of Continue's exact shape."""

import json
from pathlib import Path

import httpx

from feedback.integrations.continue_dev import map_continue_event

FIXTURES = Path(__file__).parent.parent / "feedback" / "fixtures" / "continue"


def payload(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def post(client: httpx.Client, body: dict) -> httpx.Response:
    return client.post("/v1/integrations/continue", json=body)


def test_each_continue_event_joins_a_generation(tenant):
    autocomplete = payload("autocomplete")
    r = post(tenant.ingest, autocomplete)
    assert r.status_code == 200, r.text
    assert (r.json()["stored"], r.json()["duplicates"]) == (2, 0)
    gid = f"continue:autocomplete:{autocomplete['data']['completionId']}"
    g = tenant.admin.get(f"/v1/generations/{gid}").json()
    assert g["outcome"] == "accepted"
    assert g["completion"] == autocomplete["data"]["completion"]
    assert g["prefix"] == autocomplete["data"]["prefix"] and g["model"] == autocomplete["data"]["modelName"]

    for name, outcome in [
        ("nextEditOutcome", "rejected"),
        ("editOutcome", "accepted"),
        ("chatFeedback", "shown"),  # a rating alone decides nothing
    ]:
        body = payload(name)
        r = post(tenant.ingest, body)
        assert r.status_code == 200 and r.json()["stored"] == 2, (name, r.text)
        gid = map_continue_event(body)[0]["generation_id"]
        g = tenant.admin.get(f"/v1/generations/{gid}").json()
        assert g["outcome"] == outcome, name
        assert g["completion"] and g["prompt"], name
    items = tenant.admin.get("/v1/generations").json()["items"]
    assert len(items) == 4
    chat = next(g for g in items if g["id"].startswith("continue:chat:"))
    assert chat["rating_score"] in (1.0, -1.0)


def test_both_shapes_of_0_2_0_are_stored(tenant):
    """Some Continue releases send `createdAt` and `schemaVersion` where others send `timestamp` and `schema`."""
    for name in ("autocomplete", "nextEditOutcome", "editOutcome", "chatFeedback"):
        r = post(tenant.ingest, payload(f"{name}_createdAt"))
        assert r.status_code == 200, (name, r.text)
        assert r.json()["stored"] == 2 and not r.json()["errors"], name
    chat = map_continue_event(payload("chatFeedback"))[0]["generation_id"]
    g = tenant.admin.get(f"/v1/generations/{chat}").json()
    assert g["rating_score"] == 1.0 and g["completion"]


def test_resent_continue_event_is_a_duplicate(tenant):
    body = payload("nextEditOutcome")
    post(tenant.ingest, body)
    again = post(tenant.ingest, body).json()
    assert (again["stored"], again["duplicates"]) == (0, 2)


def test_ignored_and_malformed_continue_events(tenant):
    r = post(tenant.ingest, payload("tokensGenerated"))
    assert r.status_code == 200 and r.json()["received"] == 0
    broken = payload("autocomplete")
    del broken["data"]["completionId"]
    r = post(tenant.ingest, broken)
    assert r.status_code == 422 and r.json()["detail"].startswith("data.completionId")
    r = tenant.ingest.post("/v1/integrations/continue", content=b"[1, 2]")
    assert r.status_code == 422


def test_continue_needs_a_key(server):
    r = httpx.post(f"{server.url}/v1/integrations/continue", json=payload("autocomplete"))
    assert r.status_code == 401
