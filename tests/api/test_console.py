"""The console over plain HTTP, on both backends: who may sign in, what the cookie holds, CSRF, every page with data,
the overview's rollup keeping up with new feedback, excluded code, and revocation ending a session. (The browser
test, test_console_browser.py, drives the same pages in Chromium.)"""

import re
from datetime import timedelta

import httpx

from core.db import session_scope, utcnow
from core.projects import get_project, list_keys, revoke_key

from ..conftest import Server, Tenant
from ..trainers.test_canary import served

COOKIE = "editloop_console"


def signed_in(server: Server, key: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url)
    r = client.post("/ui/login", data={"key": key})
    assert r.status_code == 303 and r.headers["location"] == "/ui", r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie and key not in cookie
    client.cookies.set(COOKIE, r.cookies[COOKIE], path="/ui")
    return client


def post(tenant: Tenant, events: list[dict]) -> None:
    for start in range(0, len(events), 50):
        r = tenant.ingest.post("/v1/events", json={"events": events[start : start + 50]})
        assert r.status_code == 200 and not r.json()["errors"], r.text


def shown(page: str) -> int:
    return int(re.search(r"generations shown \(60 days\)</th><td>([\d,]+)", page).group(1).replace(",", ""))


def target_rows(page: str) -> dict[str, dict[str, str]]:
    """The console's table of live metrics per target: target -> metric -> the cell's text (tags stripped)."""
    table = re.search(r'<table class="list targets" id="targets">(.*?)</table>', page, re.S)
    assert table, page
    rows = {}
    for target, cells in re.findall(r'<tr data-target="([^"]+)">(.*?)</tr>', table.group(1), re.S):
        found = re.findall(r'data-metric="(\w+)">(.*?)</td>', cells, re.S)
        rows[target] = {k: re.sub(r"<[^>]+>", "", v).strip() for k, v in found}
        rows[target]["aliases"] = " ".join(re.findall(r'class="badge alias">(\w+)<', cells))
    return rows


def test_sign_in_pages_and_rollup(server: Server, tenant: Tenant) -> None:
    anonymous = httpx.Client(base_url=server.url)
    assert anonymous.get("/ui/adapters").headers["location"] == "/ui/login"
    assert anonymous.post("/ui/login", data={"key": tenant.ingest_key}).status_code == 403
    assert anonymous.post("/ui/login", data={"key": "elk_nothing"}).status_code == 401
    forged = httpx.Client(base_url=server.url)
    forged.cookies.set(COOKIE, "1.9999999999.x.forged", path="/ui")
    assert forged.get("/ui").status_code == 303

    now = utcnow() - timedelta(minutes=10)
    post(tenant, served("base", accepted=6, rejected=3, edited=[2, 5], start=now))
    console = signed_in(server, tenant.admin_key)
    overview = console.get("/ui")
    assert overview.status_code == 200 and shown(overview.text) == 11
    post(tenant, served("base", accepted=4, start=now + timedelta(minutes=1)))
    assert shown(console.get("/ui").text) == 15  # the rollup recounts the days that changed

    # live metrics per target: the base served 15, by events alone (no gateway: no latency, no cost)
    base = target_rows(console.get("/ui/adapters").text)["base"]
    assert base["acceptance"].startswith("0.667 [") and base["edit_rate"].startswith("0.133 [")
    assert base["latency_p50"] == base["cost_per_1k"] == base["cost_per_accepted"] == "-"
    assert set(target_rows(console.get("/ui/adapters?days=1").text)) == {"base"}
    for path in ("/ui/feedback", "/ui/feedback?outcome=edited&user=u1", "/ui/data", "/ui/runs", "/ui/adapters"):
        assert console.get(path).status_code == 200, path
    assert console.get("/ui/canary").status_code == 200
    edited = console.get("/ui/feedback?outcome=edited").text
    generation = re.search(r'href="/ui/feedback/([^"]+)"', edited).group(1)
    detail = console.get(f"/ui/feedback/{generation}").text
    assert "model wrote" in detail and "user kept" in detail
    assert console.get("/ui/feedback?since=yesterday").status_code == 422


def test_excluded_code_csrf_and_revocation(server: Server, tenant_factory) -> None:
    tenant: Tenant = tenant_factory(["secrets/*"])
    event = {
        "event_id": "x1",
        "type": "generation",
        "generation_id": "x1",
        "occurred_at": utcnow().isoformat(),
        "prompt": "key = ",
        "completion": "'never-shown'",
        "file_path": "secrets/a.py",
        "model": "base",
    }
    post(tenant, [event])
    console = signed_in(server, tenant.admin_key)
    page = console.get("/ui/feedback/x1").text
    assert "excluded by the project" in page and "never-shown" not in page

    forged = console.post("/ui/adapters/v1/promote", data={"alias": "production", "reason": "x"})
    assert forged.status_code == 403 and "csrf_token" in forged.json()["detail"]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', console.get("/ui").text).group(1)
    cross = console.post("/ui/logout", data={"csrf_token": csrf}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    missing = console.post("/ui/adapters/v9/promote", data={"csrf_token": csrf, "alias": "production"})
    assert missing.status_code == 404 and "refused" not in missing.text and "v9" in missing.text
    nul = console.post("/ui/adapters/v9/promote", data={"csrf_token": csrf, "alias": "production", "reason": "a\x00"})
    assert nul.status_code == 422 and "form.reason" in nul.text  # what Postgres cannot store never reaches it

    with session_scope(server.db_url) as session:
        project = get_project(session, tenant.name)
        admin = next(k for k in list_keys(session, project) if k.role == "admin")
        revoke_key(session, project, admin.id)
    assert console.get("/ui").status_code == 303  # the session ended with its key

    again = signed_in_or_none(server, tenant.admin_key)
    assert again is None


def signed_in_or_none(server: Server, key: str) -> httpx.Client | None:
    r = httpx.post(f"{server.url}/ui/login", data={"key": key})
    return None if r.status_code != 303 else httpx.Client(base_url=server.url)


def test_sign_out(server: Server, tenant: Tenant) -> None:
    console = signed_in(server, tenant.admin_key)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', console.get("/ui/data").text).group(1)
    out = console.post("/ui/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert f"{COOKIE}=" in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
