"""The data-rights promise, end to end on Postgres: one user's code carries a unique marker (prompts, completions,
final code, metadata); rows are built, a snapshot cut and exported, a version trained on it. After deleting that user,
`pg_dump` of the whole database and a scan of the data directory (artifact store and export) find the marker nowhere,
the snapshot records the redaction, the version is flagged, and the other user's data is as it was."""

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from core.db import session_scope
from core.projects import Project, Role, create_key, create_project
from core.settings import Settings
from feedback import deletion
from feedback.models import DatasetSnapshot
from feedback.rights_models import DeletionRequest
from feedback.rows import build_rows
from feedback.service import ingest
from feedback.snapshots import export_snapshot
from tests.conftest import start_server
from tests.rights_data import user_events
from trainers import registry, rights, runs
from trainers.models import AdapterVersion, VersionFlag

from .test_rights import others
from .tiny import random_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
FAST = {"max_steps": 2, "batch_size": 4, "eval_examples": 4, "eval_max_new_tokens": 8}


def pg_dump(url: str) -> str:
    parsed = make_url(url)
    command = ["pg_dump", "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432)]
    command += ["-U", parsed.username or "postgres", parsed.database or ""]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def files_with(root: Path, marker: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]


def test_a_deleted_user_is_nowhere_and_the_model_that_learned_is_flagged(pg_url: str, tmp_path: Path) -> None:
    marker = f"ZQX{uuid.uuid4().hex}"
    model = random_model(tmp_path / "model")
    data_dir = tmp_path / "data"
    settings = Settings(database_url=pg_url, data_dir=data_dir)
    with session_scope(pg_url) as session:
        project = create_project(session, f"e2e-{uuid.uuid4().hex[:8]}")
        project.settings = {"model": {"base_model": str(model)}, "dataset": {"eval_fraction": 0.25}}
        project_id = project.id
    events = user_events("mallory", marker, 12) + user_events("trent", "plain", 12)
    with session_scope(pg_url) as session:
        assert ingest(session, project_id, events, Settings()).stored == len(events)
    with session_scope(pg_url) as session:
        build_rows(session, project_id)
    with session_scope(pg_url) as session:
        run_id = runs.create_run(session, project_id, "dpo", FAST, actor="test", nudge=False).id
    assert runs.execute(pg_url, run_id, settings) == "succeeded"
    with session_scope(pg_url) as session:
        run = runs.get_run(session, project_id, run_id)
        snapshot_id, version_id = run.snapshot_id, run.version_ids[0]
        original = session.get(DatasetSnapshot, snapshot_id).sha256
        export = data_dir / "exports" / f"snapshot-{snapshot_id}"
        export_snapshot(session, project_id, snapshot_id, export, "parquet")
        deletion.record_export(session, project_id, snapshot_id, export, "parquet", "test")
    trent = others(pg_url, project_id, "trent")
    assert marker in pg_dump(pg_url) and files_with(export, marker)
    assert files_with(data_dir / "artifacts", marker)  # the version's manifest keeps example texts

    with session_scope(pg_url) as session:
        request = rights.request_deletion(
            session, project_id, {"user": "mallory"}, trigger="api", actor="key:1", address="127.0.0.1"
        )
        request_id = request.id
    assert rights.process(pg_url, request_id) == "done"

    assert marker not in pg_dump(pg_url)
    assert files_with(data_dir, marker) == []
    assert others(pg_url, project_id, "trent") == trent
    with session_scope(pg_url) as session:
        request = session.get(DeletionRequest, request_id)
        assert request.counts["events"] == 24 and request.counts["versions_flagged"] == 1
        snapshot = session.get(DatasetSnapshot, snapshot_id)
        assert snapshot.original_sha256 == original != snapshot.sha256
        assert snapshot.redactions[0]["deletion_id"] == request_id
        flag = session.scalar(select(VersionFlag).where(VersionFlag.version_id == version_id))
        assert flag is not None and flag.deletion_id == request_id
        version = session.get(AdapterVersion, version_id)
        registry.verified_path(version)  # still loads: its checksums agree with the redacted manifest
        assert "samples" not in version.metrics["eval"]
        version_name = version.name

    # The console's Adapters page marks the version with the request that flagged it.
    with session_scope(pg_url) as session:
        _, admin_key = create_key(session, session.get(Project, project_id), Role.admin)
    srv, thread, url = start_server(settings)
    try:
        with httpx.Client(base_url=url) as console:
            assert console.post("/ui/login", data={"key": admin_key}).status_code == 303
            page = console.get("/ui/adapters").text
        assert f'data-deleted="{version_name}"' in page and f"deletion request {request_id}" in page
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
