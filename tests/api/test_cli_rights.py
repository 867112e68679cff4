"""Data rights on the command line (the embedded default): `data delete` walks the request in-process and reports it,
`consent set` opts out, and every audited admin command is recorded as `cli:<os user>` from `local`."""

import getpass
import json
from pathlib import Path

from typer.testing import CliRunner

from api.cli import app
from core.db import session_scope
from core.projects import get_project, list_keys
from core.settings import Settings, get_settings
from feedback.rights_models import SnapshotExport
from feedback.service import ingest
from tests.rights_data import publish_version, user_events

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def publish(settings: Settings, project_id: int) -> str:
    return publish_version(settings.sqlalchemy_url, settings.artifact_root, project_id, {})[1]


def test_every_audited_command_is_recorded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        settings = Settings(data_dir=tmp_path)
        url = settings.sqlalchemy_url
        assert run("projects", "create", "acme")[0] == 0
        code, out = run("keys", "create", "--project", "acme", "--role", "admin")
        assert code == 0
        with session_scope(url) as session:
            project_id = get_project(session, "acme").id
            key_id = max(k.id for k in list_keys(session, get_project(session, "acme")))
        plain = next(line for line in out.splitlines() if line.startswith("elk_"))
        assert run("keys", "revoke", str(key_id), "--project", "acme")[0] == 0
        assert run("projects", "set", "acme", "dataset.eval_fraction=0.3")[0] == 0
        assert run("projects", "exclude", "acme", ".env*")[0] == 0
        with session_scope(url) as session:
            ingest(session, project_id, user_events("ann", "MARKann", 6) + user_events("bo", "b", 6), Settings())
        assert run("datasets", "build", "--project", "acme")[0] == 0
        export = tmp_path / "export"
        code, out = run("datasets", "export", "1", "--project", "acme", "--out", str(export), "--format", "jsonl")
        assert code == 0, out
        v1, v2 = publish(settings, project_id), publish(settings, project_id)
        assert run("adapters", "promote", v1, "--project", "acme", "--force", "--reason", "first")[0] == 0
        assert run("adapters", "promote", v2, "--project", "acme", "--force", "--reason", "second")[0] == 0
        assert run("adapters", "rollback", "--project", "acme", "--reason", "regressed")[0] == 0
        assert run("adapters", "download", v1, "--project", "acme", "--out", str(tmp_path / "dl"))[0] == 0
        code, out = run("data", "delete", "--project", "acme", "--user", "ann")
        assert code == 0 and "done" in out and "export_folders_rewritten" in out, out
        assert not [p for p in export.rglob("*") if p.is_file() and b"MARKann" in p.read_bytes()]
        assert run("data", "delete", "--project", "acme")[0] == 1  # no selector
        code, out = run("data", "list", "--project", "acme")
        assert code == 0 and "done" in out
        assert run("consent", "set", "--project", "acme", "--user", "bo")[0] == 0
        code, out = run("consent", "list", "--project", "acme")
        assert code == 0 and "bo" in out

        code, out = run("audit", "--project", "acme", "--json")
        assert code == 0, out
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        actions = [e["action"] for e in reversed(entries)]
        assert actions == [
            "key.create",
            "key.revoke",
            "settings.change",
            "settings.change",
            "dataset.export",
            "adapter.promote",
            "adapter.promote",
            "adapter.rollback",
            "adapter.download",
            "deletion.create",
            "consent.set",
        ]
        assert {e["actor"] for e in entries} == {f"cli:{getpass.getuser()}"}
        assert {e["address"] for e in entries} == {"local"}
        assert plain not in out and "MARKann" not in out
        code, out = run("audit", "--project", "acme", "--action", "key.")
        assert code == 0 and "key.create" in out and "adapter" not in out
        with session_scope(url) as session:
            exports = session.query(SnapshotExport).all()
            assert [(e.snapshot_id, e.format) for e in exports] == [(1, "jsonl")]
    finally:
        get_settings.cache_clear()
