"""GET /metrics: the counters move with ingest and generation; it is refused without the token (or off loopback);
every response carries a request id, and the access log names the key by its hint, never the key."""

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import logs
from core.settings import Settings

from ..conftest import Server, Tenant, make_tenant, start_server
from ..trainers.test_canary import served


@pytest.fixture(scope="module")
def pg_server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = Settings(database_url=pg_url, data_dir=tmp_path_factory.mktemp("metrics"), auth_cache_ttl_s=0)
    srv, thread, url = start_server(settings)
    yield Server(url=url, db_url=pg_url, settings=settings)
    srv.should_exit = True
    thread.join(timeout=10)


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{url}/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_ingest_and_generation(pg_server: Server, serving_model: Path) -> None:
    tenant: Tenant = make_tenant(pg_server)
    r = tenant.admin.patch("/v1/project/settings", json={"model": {"base_model": str(serving_model)}})
    assert r.status_code == 200
    before = scrape(pg_server.url)

    events = served("base", accepted=3, rejected=2)
    assert tenant.ingest.post("/v1/events", json={"events": events + [{"type": "rating"}]}).status_code == 200
    assert tenant.ingest.post("/v1/events", json={"events": events[:2]}).status_code == 200  # duplicates
    done = tenant.ingest.post("/v1/completions", json={"model": "base", "prompt": "def add(a, b):", "max_tokens": 6})
    assert done.status_code == 200, done.text
    after = scrape(pg_server.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("editloop_events_ingested_total", type="generation", result="stored") == 5 + 1  # + the gateway's
    assert moved("editloop_events_ingested_total", type="accepted", result="stored") == 3
    assert moved("editloop_events_ingested_total", type="generation", result="duplicate") == 1
    assert moved("editloop_events_ingested_total", type="accepted", result="duplicate") == 1
    assert moved("editloop_events_ingested_total", type="rating", result="invalid") == 1
    assert moved("editloop_gateway_generations_total", model="base") == 1
    assert moved("editloop_gateway_tokens_total", model="base", kind="completion") == 6
    assert moved("editloop_gateway_generation_seconds_count", model="base") == 1
    assert moved("editloop_group_commit_events_count") >= 3
    route = {"method": "POST", "route": "/v1/events", "status": "200"}
    assert moved("editloop_http_request_duration_seconds_count", **route) == 2
    assert moved("editloop_http_request_duration_seconds_count", method="POST", route="/v1/completions", status="200")
    assert ("editloop_fold_queue_depth", ()) in after and ("editloop_fold_lag_seconds", ()) in after
    assert value(after, "editloop_training_runs", state="running") == 0


def test_metrics_need_the_token(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=pg_url, data_dir=tmp_path, metrics_token="s3cret-scrape")
    srv, thread, url = start_server(settings)
    try:
        refused = httpx.get(f"{url}/metrics")
        assert refused.status_code == 403 and "EDITLOOP_METRICS_TOKEN" in refused.json()["detail"]
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert scrape(url, Authorization="Bearer s3cret-scrape")
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_only_loopback_without_a_token() -> None:
    from api.metrics import allowed

    assert allowed(None, None, "127.0.0.1") and allowed(None, None, "::1")
    assert not allowed(None, None, "10.0.0.7") and not allowed(None, None, None)
    assert not allowed("t", None, "127.0.0.1") and allowed("t", "Bearer t", "10.0.0.7")


def test_request_id_and_json_access_log(pg_server: Server) -> None:
    tenant = make_tenant(pg_server)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    access = logging.getLogger("editloop.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        r = tenant.ingest.post(
            "/v1/events", json={"events": served("base", accepted=1)}, headers={"X-Request-ID": "req-abc.1"}
        )
        made_up = tenant.admin.get("/v1/runs")
        deadline = time.monotonic() + 5  # the line is written once the response is sent
        while made_up.headers["x-request-id"] not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access.removeHandler(handler)
    assert r.headers["x-request-id"] == "req-abc.1" and len(made_up.headers["x-request-id"]) == 16
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ingest = next(line for line in lines if line.get("request_id") == "req-abc.1")
    assert ingest["route"] == "/v1/events" and ingest["status"] == 200 and ingest["key"] == tenant.ingest_key[:10]
    assert tenant.ingest_key not in stream.getvalue() and tenant.admin_key not in stream.getvalue()
    assert any(line.get("request_id") == made_up.headers["x-request-id"] for line in lines)
