"""GET /v1/datasets: admin keys read their own project's snapshots; and `editloop datasets` list, show, export."""

import json

import typer
from typer.testing import CliRunner

from api.cli_datasets import datasets_app
from core.db import session_scope
from core.projects import get_project
from core.settings import get_settings
from feedback.models import DatasetBuild
from feedback.snapshots import cut_snapshot
from tests.factories import T0
from tests.feedback.test_snapshots import training_row


def seed(server, tenant) -> tuple[int, int]:
    """Two snapshots of the tenant's project: the first with no build, the second cut after one."""
    with session_scope(server.db_url) as session:
        project = get_project(session, tenant.name)
        session.add_all(
            training_row(project.id, kind, f"def f{g}():\n", t=g) for g in range(5) for kind in ("sft", "kto")
        )
        first = cut_snapshot(session, project.id)
        session.add(training_row(project.id, "edit_pair", "def g():\n", t=9))
        build = DatasetBuild(
            project_id=project.id, started_at=T0, finished_at=T0, generations_read=6, rows_added=11, report={"kept": 11}
        )
        session.add(build)
        session.flush()
        second = cut_snapshot(session, project.id, build_id=build.id)
        return first.id, second.id


def test_admin_lists_and_reads_snapshots(server, tenant):
    first, second = seed(server, tenant)
    r = tenant.admin.get("/v1/datasets")
    assert r.status_code == 200
    items = r.json()["items"]
    assert [s["id"] for s in items] == [second, first]
    assert items[1]["row_count"] == 10 and items[1]["counts"]["sft"] == {"train": 4, "eval": 1}
    assert set(items[0]) == {
        "id",
        "created_at",
        "sha256",
        "counts",
        "row_count",
        "build_id",
        "original_sha256",
        "redactions",
    }

    detail = tenant.admin.get(f"/v1/datasets/{second}").json()
    # The split is stratified by row kind; a kind held by one prompt alone stays in training (feedback/snapshots.py).
    assert detail["row_count"] == 11 and detail["counts"]["edit_pair"] == {"train": 1, "eval": 0}
    assert detail["build"]["rows_added"] == 11 and detail["build"]["report"] == {"kept": 11}
    assert detail["config"]["split_by"] == "time" and detail["sha256"] == items[0]["sha256"]
    assert tenant.admin.get(f"/v1/datasets/{first}").json()["build"] is None


def test_ingest_keys_and_other_tenants_cannot_read_snapshots(server, tenant_factory):
    owner, other = tenant_factory(), tenant_factory()
    _, snapshot = seed(server, owner)
    for path in ("/v1/datasets", f"/v1/datasets/{snapshot}"):
        r = owner.ingest.get(path)
        assert r.status_code == 403 and r.json()["error"] == "permission_denied"
    r = other.admin.get(f"/v1/datasets/{snapshot}")
    assert r.status_code == 404 and r.json() == {
        "error": "not_found",
        "detail": f"dataset snapshot {snapshot} does not exist",
    }
    assert other.admin.get("/v1/datasets").json() == {"items": []}
    r = owner.admin.get("/v1/datasets/latest")
    assert r.status_code == 422 and r.json()["detail"].startswith("path.snapshot_id")


def test_cli_lists_shows_and_exports(server, tenant, monkeypatch, tmp_path):
    _, snapshot = seed(server, tenant)
    monkeypatch.setenv("EDITLOOP_DATABASE_URL", server.db_url)
    get_settings.cache_clear()
    app = typer.Typer()
    app.add_typer(datasets_app, name="datasets")
    run = CliRunner().invoke
    try:
        listed = run(app, ["datasets", "list", "--project", tenant.name])
        assert listed.exit_code == 0 and str(snapshot) in listed.output
        shown = run(app, ["datasets", "show", str(snapshot), "--project", tenant.name])
        assert shown.exit_code == 0 and "edit_pair" in shown.output and '"kept": 11' in shown.output
        out = tmp_path / "export"
        exported = run(app, ["datasets", "export", str(snapshot), "--project", tenant.name, "--out", str(out)])
        assert exported.exit_code == 0, exported.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["snapshot_id"] == snapshot and manifest["format"] == "parquet"
        assert sorted(f["name"] for f in manifest["files"]) == sorted(p.name for p in out.glob("*.parquet"))
        missing = run(app, ["datasets", "show", "999999", "--project", tenant.name])
        assert missing.exit_code == 1 and "does not exist" in missing.output
    finally:
        get_settings.cache_clear()
