"""Runs, adapters and model settings over real HTTP: admin only, scoped to the key's project, clear 4xx."""

import io
import tarfile
from pathlib import Path

import pytest

from core.db import session_scope
from core.projects import get_project
from trainers import runs
from trainers.models import TrainingRun

from ..conftest import Server, Tenant
from ..trainers.tiny import random_model, style_events

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("model") / "tiny")


def test_model_settings_and_runs_over_http(server: Server, tenant: Tenant, tenant_factory, model_dir: Path) -> None:
    assert tenant.ingest.get("/v1/project/settings").status_code == 403
    r = tenant.admin.post("/v1/runs", json={"kind": "dpo"})
    assert r.status_code == 422 and "settings.model.base_model" in r.json()["detail"]

    r = tenant.admin.patch("/v1/project/settings", json={"model": {"auto_promote": "sometimes"}})
    assert r.status_code == 422 and "settings.model.auto_promote" in r.json()["detail"]
    r = tenant.admin.patch("/v1/project/settings", json={"model": {"base_model": str(model_dir)}})
    assert r.status_code == 200 and r.json()["model"]["base_model"] == str(model_dir)
    assert r.json()["dataset"]["eval_fraction"] == 0.1  # defaults shown

    tenant.admin.patch("/v1/project/settings", json={"dataset": {"eval_fraction": 0.2}})
    events = style_events(24)
    assert tenant.ingest.post("/v1/events", json={"events": events}).status_code == 200
    from feedback.rows import build_rows

    with session_scope(server.db_url) as session:
        project_id = get_project(session, tenant.name).id
        build_rows(session, project_id)

    assert tenant.ingest.post("/v1/runs", json={"kind": "dpo"}).status_code == 403
    r = tenant.admin.post("/v1/runs", json={"kind": "dpo", "config": {"lora_r": 0}})
    assert r.status_code == 422 and "config.lora_r" in r.json()["detail"]
    r = tenant.admin.post("/v1/runs", json={"kind": "dpo", "snapshot_id": 999999})
    assert r.status_code == 404
    fast = {"max_steps": 3, "batch_size": 4, "eval_examples": 4, "eval_max_new_tokens": 8}
    r = tenant.admin.post("/v1/runs", json={"kind": "dpo", "config": fast})
    assert r.status_code == 202, r.text
    run = r.json()
    assert run["status"] == "queued" and run["config"]["beta"] == 0.1 and run["config"]["max_steps"] == 3
    assert tenant.admin.post("/v1/runs", json={"kind": "sft"}).status_code == 409

    other = tenant_factory()
    assert other.admin.get(f"/v1/runs/{run['id']}").status_code == 404
    assert other.admin.get("/v1/runs").json()["items"] == []

    assert runs.execute(server.db_url, run["id"], server.settings) == "succeeded"
    got = tenant.admin.get(f"/v1/runs/{run['id']}").json()
    assert got["status"] == "succeeded" and got["progress"]["stage"] == "done"
    assert got["metrics"]["train"]["steps"] == 3 and got["metrics"]["live"]
    assert len(got["version_ids"]) == 1

    listed = tenant.admin.get("/v1/adapters").json()
    assert [v["name"] for v in listed["items"]] == ["v1"] and listed["aliases"] == {}
    assert other.admin.get("/v1/adapters/v1").status_code == 404
    detail = tenant.admin.get("/v1/adapters/v1").json()
    assert detail["manifest"]["lineage"]["snapshot_id"] == run["snapshot_id"]

    r = tenant.admin.post("/v1/adapters/v1/promote", json={"alias": "production", "reason": "first"})
    assert r.status_code == 200 and r.json()["version"] == "v1" and r.json()["gate"]["passed"]
    assert tenant.admin.get("/v1/adapters/production").json()["name"] == "v1"
    r = tenant.admin.post("/v1/adapters/v1/promote", json={"alias": "staging"})
    assert r.status_code == 422
    r = tenant.admin.post("/v1/aliases/production/rollback", json={})
    assert r.status_code == 409  # nothing before v1
    history = tenant.admin.get("/v1/adapters/history").json()["items"]
    assert [(e["action"], e["version"], e["reason"]) for e in history] == [("promote", "v1", "first")]

    r = tenant.admin.get("/v1/adapters/production/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = tar.getnames()
    assert {"v1/manifest.json", "v1/adapter_model.safetensors", "v1/adapter_config.json"} <= set(names)

    r = tenant.admin.post(f"/v1/runs/{run['id']}/cancel")
    assert r.status_code == 409
    with session_scope(server.db_url) as session:
        assert session.get(TrainingRun, run["id"]).created_by.startswith("key ")
