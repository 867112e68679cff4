"""GET /v1/generations: filters and cursor paging."""

from datetime import UTC, datetime, timedelta

from tests.factories import feedback, generation, new_id


def test_filters_and_paging(tenant):
    ids = [new_id() for _ in range(7)]
    events = []
    for i, gid in enumerate(ids):
        events.append(generation(gid, i, model="v1" if i % 2 else "base"))
        if i < 3:
            events.append(feedback(gid, "accepted", i + 1))
    assert tenant.ingest.post("/v1/events", json={"events": events}).status_code == 200

    page = tenant.admin.get("/v1/generations", params={"limit": 3}).json()
    seen = [g["id"] for g in page["items"]]
    while page["next_cursor"]:
        page = tenant.admin.get("/v1/generations", params={"limit": 3, "cursor": page["next_cursor"]}).json()
        seen += [g["id"] for g in page["items"]]
    assert sorted(seen) == sorted(ids) and len(seen) == 7

    accepted = tenant.admin.get("/v1/generations", params={"outcome": "accepted"}).json()["items"]
    assert sorted(g["id"] for g in accepted) == sorted(ids[:3])
    v1 = tenant.admin.get("/v1/generations", params={"model": "v1"}).json()["items"]
    assert sorted(g["id"] for g in v1) == sorted(ids[1::2])
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert tenant.admin.get("/v1/generations", params={"since": future}).json()["items"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len(tenant.admin.get("/v1/generations", params={"since": past, "limit": 100}).json()["items"]) == 7


def test_bad_query_parameters_name_the_field(tenant):
    r = tenant.admin.get("/v1/generations", params={"outcome": "maybe"})
    assert r.status_code == 422 and r.json()["detail"].startswith("query.outcome")
    r = tenant.admin.get("/v1/generations", params={"cursor": "garbage!"})
    assert r.status_code == 422 and r.json()["detail"].startswith("cursor")
    r = tenant.admin.get("/v1/generations", params={"limit": 0})
    assert r.status_code == 422 and "limit" in r.json()["detail"]
