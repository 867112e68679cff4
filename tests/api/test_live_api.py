"""Live metrics and comparisons over real HTTP (feedback posted to /v1/events, versions promoted through the API) and
through `editloop adapters metrics / compare` on the embedded database."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from api.cli import app
from core.db import session_scope
from core.projects import get_project
from core.settings import Settings, get_settings
from feedback.service import ingest
from trainers import canary, registry

from ..conftest import Server, Tenant
from ..trainers.test_canary import T0, lora_adapter, publish, served

runner = CliRunner()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lora_adapter(tmp_path_factory.mktemp("lora") / "adapter")


def post(tenant: Tenant, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 50):  # the test server's batch limit
        r = tenant.ingest.post("/v1/events", json={"events": events[start : start + 50]})
        assert r.status_code == 200 and not r.json()["errors"], r.text


def test_metrics_and_compare_over_http(server: Server, tenant: Tenant, tenant_factory, adapter: Path) -> None:
    with session_scope(server.db_url) as session:
        project_id = get_project(session, tenant.name).id
        v1, v2 = (publish(session, server.settings.artifact_root, project_id, adapter) for _ in range(2))
    assert tenant.admin.post(f"/v1/adapters/{v1}/promote", json={"alias": "production"}).status_code == 200
    assert tenant.admin.post(f"/v1/adapters/{v2}/promote", json={"alias": "canary"}).status_code == 200

    later = T0 + timedelta(hours=1)
    post(tenant, served(v1, accepted=15, rejected=35, edited=[5] * 10, shown=3, start=later))
    post(tenant, served(v2, accepted=40, rejected=10, edited=[1] * 10, start=later))
    post(tenant, served(v2, rejected=20, start=T0))

    m = tenant.admin.get("/v1/adapters/production/metrics").json()
    assert (m["ref"], m["model"], m["served"], m["with_feedback"]) == ("production", v1, 63, 60)
    assert (m["accepted"], m["edited"], m["rejected"]) == (15, 10, 35)
    assert m["acceptance_rate"]["rate"] == pytest.approx(0.25) and m["acceptance_rate"]["n"] == 60
    assert m["acceptance_rate"]["low"] < 0.25 < m["acceptance_rate"]["high"]
    assert m["edit_distance"]["mean"] == pytest.approx(0.5) and m["edit_distance"]["method"].startswith("percentile")

    canary = tenant.admin.get(f"/v1/adapters/{v2}/metrics").json()
    assert (canary["served"], canary["rejected"]) == (80, 30)
    windowed = tenant.admin.get("/v1/adapters/canary/metrics", params={"since": later.isoformat()}).json()
    assert (windowed["served"], windowed["rejected"]) == (60, 10) and windowed["since"].startswith("2026-11-02T10:00")

    params: dict[str, str | int] = {"a": "canary", "b": "production", "since": later.isoformat(), "min_samples": 30}
    c = tenant.admin.get("/v1/adapters/compare", params=params).json()
    acc = c["tests"]["acceptance_rate"]
    assert c["verdict"] == acc["verdict"] == "better" and acc["method"].startswith("mixture sequential")
    assert acc["p_value"] < 0.01 and acc["difference"] == pytest.approx(40 / 60 - 15 / 60)
    dist = c["tests"]["edit_distance"]
    assert dist["verdict"] == "not enough data" and dist["n"] == [10, 10] and dist["p_value"] < 0.001
    assert c["a"]["model"] == v2 and c["b"]["model"] == v1 and (c["alpha"], c["min_samples"]) == (0.05, 30)
    default = tenant.admin.get("/v1/adapters/compare", params={"a": "canary", "b": "production"}).json()
    assert default["min_samples"] == 50 and default["tests"]["acceptance_rate"]["n"] == [80, 60]

    r = tenant.admin.get("/v1/adapters/v7/metrics")
    assert r.status_code == 404 and "'v7'" in r.json()["detail"]
    r = tenant.admin.get("/v1/adapters/compare", params={"a": "canary", "b": "nightly"})
    assert r.status_code == 404 and "'nightly'" in r.json()["detail"]
    assert tenant.admin.get("/v1/adapters/compare", params={"a": "canary"}).status_code == 422
    assert tenant.admin.get("/v1/adapters/base/metrics").json()["served"] == 0
    assert tenant.ingest.get("/v1/adapters/production/metrics").status_code == 403
    assert tenant.admin.get("/v1/adapters/production").json()["name"] == v1  # the existing route still answers
    other = tenant_factory()
    assert other.admin.get(f"/v1/adapters/{v1}/metrics").status_code == 404


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_metrics_and_compare_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter: Path) -> None:
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "240")  # wide enough that rich does not fold the test names
    get_settings.cache_clear()
    try:
        assert run("projects", "create", "acme")[0] == 0
        settings = Settings(data_dir=tmp_path)
        with session_scope(settings.sqlalchemy_url) as session:
            project_id = get_project(session, "acme").id
            v1, v2 = (publish(session, settings.artifact_root, project_id, adapter) for _ in range(2))
            events = served(v1, accepted=10, rejected=50) + served(v2, accepted=45, rejected=15, edited=[2, 4])
            ingest(session, project_id, events, Settings())
        assert run("adapters", "promote", v1, "--project", "acme", "--reason", "first")[0] == 0
        assert run("adapters", "promote", v2, "--project", "acme", "--alias", "canary")[0] == 0

        code, out = run("adapters", "metrics", "canary", "--project", "acme")
        assert code == 0, out
        assert "acceptance rate" in out and "0.726 [" in out and "(45/62)" in out and "0.300 [" in out
        code, out = run("adapters", "metrics", "v1", "--project", "acme", "--since", "2030-01-01")
        assert code == 0 and "served" in out and "(0/0)" not in out and " - " in out

        code, out = run("adapters", "compare", "canary", "production", "--project", "acme")
        assert code == 0, out
        assert "mixture sequential" in out and "Mann-Whitney" in out and "verdict for canary: better" in out
        code, out = run("adapters", "compare", "production", "canary", "--project", "acme", "--min-samples", "100")
        assert code == 0 and "verdict for production: not enough data" in out
        code, out = run("adapters", "metrics", "v9", "--project", "acme")
        assert code == 1 and "'v9'" in out
        code, out = run("adapters", "compare", "--help")
        assert code == 0 and "Mann-Whitney" in out and "--min-samples" in out

        with session_scope(settings.sqlalchemy_url) as session:
            assert canary.compare(session, project_id, "canary", "production")["verdict"] == "better"
            assert registry.get_version(session, project_id, "canary").name == v2
    finally:
        get_settings.cache_clear()
