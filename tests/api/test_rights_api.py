"""Data rights over HTTP: deletion requests (202, then their state and what they removed), opt-outs at ingest, and
the audit log, with a test that each audited admin action is recorded (who, from where, what)."""

import json
from pathlib import Path
from typing import Any

from core.db import session_scope
from core.projects import authenticate, get_project
from tests.conftest import Server, Tenant
from tests.rights_data import publish_version, user_events
from trainers import registry, rights


def key_id(server: Server, plain: str) -> int:
    with session_scope(server.db_url) as session:
        found = authenticate(session, plain)
        assert found is not None
        return found.key_id


def project_id(server: Server, tenant: Tenant) -> int:
    with session_scope(server.db_url) as session:
        return get_project(session, tenant.name).id


def test_a_deletion_is_accepted_then_reports_what_it_removed(server: Server, tenant: Tenant) -> None:
    events = user_events("alice", "A", 3) + user_events("bob", "B", 3)
    assert tenant.ingest.post("/v1/events", json={"events": events}).status_code == 200
    gid = events[0]["generation_id"]
    assert tenant.ingest.post("/v1/deletions", json={"user": "alice"}).status_code == 403
    r = tenant.admin.post("/v1/deletions", json={"user": "alice", "session": "x"})
    assert r.status_code == 422 and "exactly one" in r.json()["detail"]
    r = tenant.admin.post("/v1/deletions", json={"user": "alice"})
    assert r.status_code == 202 and r.json()["state"] == "queued"
    request_id = r.json()["id"]
    assert tenant.admin.get(f"/v1/deletions/{request_id}").json()["state"] == "queued"

    assert rights.process(server.db_url, request_id) == "done"  # what the worker runs on the message
    found = tenant.admin.get(f"/v1/deletions/{request_id}").json()
    assert found["state"] == "done" and found["removed"]["events"] == 6 and found["removed"]["generations"] == 3
    assert found["snapshots"] == [] and found["versions"] == []
    assert found["selector"]["user"].startswith("sha256:")
    assert tenant.admin.get(f"/v1/generations/{gid}").status_code == 404
    assert tenant.admin.get(f"/v1/generations/{events[-2]['generation_id']}").status_code == 200
    assert [d["id"] for d in tenant.admin.get("/v1/deletions").json()["items"]] == [request_id]
    assert tenant.admin.get("/v1/deletions/999999").status_code == 404


def test_an_opted_out_user_keeps_outcomes_but_no_code(server: Server, tenant: Tenant) -> None:
    before = user_events("carol", "C", 1)
    assert tenant.ingest.post("/v1/events", json={"events": before}).status_code == 200
    assert tenant.ingest.post("/v1/consent", json={"subject": "carol"}).status_code == 403
    r = tenant.admin.post("/v1/consent", json={"subject": "carol"})
    assert r.status_code == 200 and r.json()["opted_out"] is True and r.json()["kind"] == "user"
    r = tenant.admin.post("/v1/consent", json={"kind": "repository", "subject": "acme/secret-repo"})
    assert r.status_code == 200
    after = user_events("carol", "C", 2, start=5)
    repo = user_events("dan", "D", 1, repository="acme/secret-repo")
    free = user_events("dan", "D", 1, start=9, repository="acme/open-repo")
    assert tenant.ingest.post("/v1/events", json={"events": after + repo + free}).status_code == 200

    def generation(event: dict[str, Any]) -> dict[str, Any]:
        return tenant.admin.get(f"/v1/generations/{event['generation_id']}").json()

    kept = generation(before[0])  # opting out does not delete the past
    assert kept["prompt"] and not kept["excluded"]
    for event in (after[0], after[2], repo[0]):
        g = generation(event)
        assert g["excluded"] and g["prompt"] is None and g["completion"] is None and g["final_text"] is None
        assert g["outcome"] in ("edited", "accepted")  # the live metrics still count it
    assert generation(free[0])["prompt"]

    r = tenant.admin.post("/v1/consent", json={"subject": "carol", "opted_out": False})
    assert r.json()["opted_out"] is False
    back = user_events("carol", "C", 1, start=20)
    tenant.ingest.post("/v1/events", json={"events": back})
    assert generation(back[0])["prompt"]
    listed = tenant.admin.get("/v1/consent").json()["items"]
    assert {(c["kind"], c["subject"], c["opted_out"]) for c in listed} == {
        ("user", "carol", False),
        ("repository", "acme/secret-repo", True),
    }


def publish(server: Server, pid: int, samples: Any = ()) -> str:
    root = server.settings.artifact_root
    return publish_version(server.db_url, root, pid, {"eval": {"samples": list(samples)}})[1]


def test_every_admin_action_over_http_is_audited(server: Server, tenant: Tenant, tmp_path: Path) -> None:
    pid = project_id(server, tenant)
    admin = key_id(server, tenant.admin_key)
    v1, v2 = publish(server, pid), publish(server, pid)
    model = tmp_path / "no-model"
    steps = [
        ("settings.change", tenant.admin.patch("/v1/project/settings", json={"model": {"base_model": str(model)}})),
        ("adapter.promote", tenant.admin.post(f"/v1/adapters/{v1}/promote", json={"force": True, "reason": "t"})),
        ("adapter.promote", tenant.admin.post(f"/v1/adapters/{v2}/promote", json={"force": True, "reason": "t"})),
        ("adapter.rollback", tenant.admin.post("/v1/aliases/production/rollback", json={"reason": "regressed"})),
        ("adapter.download", tenant.admin.get(f"/v1/adapters/{v2}/download")),
        ("deletion.create", tenant.admin.post("/v1/deletions", json={"user": "zed"})),
        ("consent.set", tenant.admin.post("/v1/consent", json={"subject": "zed"})),
    ]
    for action, response in steps:
        assert response.status_code in (200, 202), (action, response.text)
    run = tenant.admin.post("/v1/runs", json={"kind": "sft"})
    assert run.status_code == 202, run.text
    assert tenant.admin.post(f"/v1/runs/{run.json()['id']}/cancel").status_code == 200

    assert tenant.ingest.get("/v1/audit").status_code == 403
    entries = tenant.admin.get("/v1/audit").json()["items"]
    actions = [e["action"] for e in reversed(entries)]
    assert actions == [a for a, _ in steps] + ["run.create", "run.cancel"]
    assert {e["actor"] for e in entries} == {f"key:{admin}"}
    assert {e["address"] for e in entries} == {"127.0.0.1"}
    by = {e["action"]: e for e in entries}
    assert by["adapter.download"]["target"] == f"adapter:{v2}"
    assert by["adapter.rollback"]["target"] == f"adapter:{v1}" and by["adapter.rollback"]["details"]["alias"]
    assert by["settings.change"]["details"]["changes"] == {"model.base_model": str(model)}
    assert by["deletion.create"]["details"]["selector"]["user"].startswith("sha256:")
    assert by["consent.set"]["target"].startswith("user:sha256:")
    text = json.dumps(entries)
    assert tenant.admin_key not in text and tenant.ingest_key not in text and "zed" not in text

    only = tenant.admin.get("/v1/audit", params={"action": "adapter."}).json()["items"]
    assert [e["action"] for e in only] == ["adapter.download", "adapter.rollback", "adapter.promote", "adapter.promote"]
    assert tenant.admin.get("/v1/audit", params={"actor": "key:0"}).json()["items"] == []
    since = entries[0]["at"]
    assert [e["action"] for e in tenant.admin.get("/v1/audit", params={"since": since}).json()["items"]] == [
        "run.cancel"
    ]


def test_a_flagged_version_shows_its_deletion(server: Server, tenant: Tenant) -> None:
    from feedback.rows import build_rows
    from feedback.snapshots import cut_snapshot
    from trainers.models import AdapterVersion

    pid = project_id(server, tenant)
    events = user_events("erin", "E", 4) + user_events("finn", "F", 4)
    assert tenant.ingest.post("/v1/events", json={"events": events}).status_code == 200
    with session_scope(server.db_url) as session:
        build_rows(session, pid)
    with session_scope(server.db_url) as session:
        snapshot = cut_snapshot(session, pid)
        snapshot_id = snapshot.id
    name = publish(server, pid, [{"prompt": "E"}])
    with session_scope(server.db_url) as session:
        version = registry.get_version(session, pid, name)
        session.query(AdapterVersion).filter_by(id=version.id).update({"snapshot_id": snapshot_id})
    request_id = tenant.admin.post("/v1/deletions", json={"user": "erin"}).json()["id"]
    assert rights.process(server.db_url, request_id) == "done"
    found = tenant.admin.get(f"/v1/deletions/{request_id}").json()
    assert found["snapshots"][0]["id"] == snapshot_id and found["versions"][0]["name"] == name
    listed = tenant.admin.get("/v1/adapters").json()["items"]
    assert listed[0]["deleted_data"][0]["deletion_id"] == request_id
    assert tenant.admin.get(f"/v1/adapters/{name}").json()["deleted_data"][0]["deletion_id"] == request_id
    dataset = tenant.admin.get(f"/v1/datasets/{snapshot_id}").json()
    assert dataset["redactions"][0]["deletion_id"] == request_id and dataset["original_sha256"]
