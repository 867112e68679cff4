"""The `editloop` command line on the embedded default (a fresh SQLite file in a temporary directory)."""

from typer.testing import CliRunner

from api.cli import app
from core.db import session_scope
from core.projects import authenticate, get_project
from core.settings import Settings

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_projects_keys_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path))
    from core.settings import get_settings

    get_settings.cache_clear()
    try:
        assert run("projects", "create", "acme", "--exclude", ".env*")[0] == 0
        code, out = run("projects", "create", "acme")
        assert code == 1 and "already exists" in out
        assert run("projects", "create", "Bad Name!")[0] == 1

        code, out = run("keys", "create", "--project", "acme", "--role", "admin")
        assert code == 0
        key = next(line for line in out.splitlines() if line.startswith("elk_"))
        url = Settings(data_dir=tmp_path).sqlalchemy_url
        with session_scope(url) as session:
            who = authenticate(session, key)
        assert who is not None and who.role.value == "admin" and who.excluded_paths == (".env*",)
        assert run("keys", "create", "--project", "nope")[0] == 1

        assert run("projects", "set", "acme", "dataset.eval_fraction=0.25", "dataset.split_by=user")[0] == 0
        code, out = run("projects", "set", "acme", "dataset.eval_fraction=3")
        assert code == 1 and "dataset.eval_fraction" in out
        assert run("projects", "set", "acme", "nonsense=1")[0] == 1
        with session_scope(url) as session:
            assert get_project(session, "acme").settings == {"dataset": {"eval_fraction": 0.25, "split_by": "user"}}
        code, out = run("projects", "show", "acme")
        assert code == 0 and "0.25" in out

        code, out = run("keys", "list", "--project", "acme")
        assert code == 0 and "admin" in out
        key_id = out.split("│")[1].strip() if "│" in out else "1"
        assert run("keys", "revoke", key_id, "--project", "acme")[0] == 0
        with session_scope(url) as session:
            assert authenticate(session, key) is None
    finally:
        get_settings.cache_clear()
