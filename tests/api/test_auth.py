"""Who may do what: keys, roles, and isolation between projects."""

import httpx

from core.db import session_scope
from core.projects import get_project, list_keys, revoke_key
from tests.factories import generation, new_id


def test_missing_or_wrong_key_is_401(server):
    with httpx.Client(base_url=server.url) as anon:
        r = anon.post("/v1/events", json={"events": []})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert anon.get("/v1/generations", headers={"Authorization": "Bearer elk_nope"}).status_code == 401
        assert anon.get("/v1/generations", headers={"Authorization": "Basic abc"}).status_code == 401


def test_wrong_role_is_403(tenant):
    r = tenant.ingest.get("/v1/generations")
    assert r.status_code == 403 and r.json()["error"] == "permission_denied"
    assert tenant.ingest.get("/v1/generations/anything").status_code == 403
    assert tenant.admin.post("/v1/events", json={"events": [generation(new_id())]}).status_code == 200


def test_projects_never_see_each_other(tenant_factory):
    a, b = tenant_factory(), tenant_factory()
    gid = new_id()
    a.ingest.post("/v1/events", json={"events": [generation(gid, completion="secret sauce")]})
    assert a.admin.get(f"/v1/generations/{gid}").status_code == 200
    assert b.admin.get(f"/v1/generations/{gid}").status_code == 404
    assert b.admin.get("/v1/generations").json()["items"] == []
    # The same ids in another project are another generation, not a duplicate.
    r = b.ingest.post("/v1/events", json={"events": [generation(gid, completion="mine")]})
    assert r.json()["stored"] == 1
    assert a.admin.get(f"/v1/generations/{gid}").json()["completion"] == "secret sauce"
    assert b.admin.get(f"/v1/generations/{gid}").json()["completion"] == "mine"


def test_revoked_key_is_refused(tenant, server):
    assert tenant.ingest.post("/v1/events", json={"events": []}).status_code == 200
    with session_scope(server.db_url) as session:
        project = get_project(session, tenant.name)
        for key in list_keys(session, project):
            if tenant.ingest_key.startswith(key.hint) and key.role == "ingest":
                revoke_key(session, project, key.id)
    assert tenant.ingest.post("/v1/events", json={"events": []}).status_code == 401
