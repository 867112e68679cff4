"""`editloop train`, `runs`, `adapters` and `projects set model.*` on the embedded default: a run trains in-process
with a progress bar and registers a version that can be promoted, rolled back and downloaded."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from core.db import session_scope
from core.projects import get_project
from core.settings import Settings, get_settings
from feedback.rows import build_rows
from feedback.service import ingest

from ..trainers.tiny import random_model, style_events

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    # A wide terminal: the history table's gate column holds a verdict with intervals, cut at 80 columns.
    result = runner.invoke(app, list(args), env={"COLUMNS": "240"})
    return result.exit_code, result.output


def test_train_promote_rollback_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITLOOP_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        model = random_model(tmp_path / "tiny")
        assert run("projects", "create", "acme")[0] == 0
        code, out = run("train", "--project", "acme", "--kind", "dpo")
        assert code == 1 and "model.base_model" in out
        assert run("projects", "set", "acme", f"model.base_model={model}", "dataset.eval_fraction=0.2")[0] == 0
        code, out = run("projects", "set", "acme", "model.auto_promote=always")
        assert code == 1 and "model.auto_promote" in out
        code, out = run("projects", "show", "acme")
        assert code == 0 and "model.base_model" in out

        url = Settings(data_dir=tmp_path).sqlalchemy_url
        with session_scope(url) as session:
            project_id = get_project(session, "acme").id
            ingest(session, project_id, style_events(30), Settings())
        with session_scope(url) as session:
            build_rows(session, project_id)

        code, out = run("train", "--project", "acme", "--kind", "dpo", "--set", "beta=oops")
        assert code == 1 and "config.beta" in out
        code, out = run("train", "--project", "acme", "--kind", "ppo")
        assert code == 1 and "--kind" in out
        code, out = run("train", "--project", "acme", "--kind", "kto", "--show-config")
        assert code == 0 and "desirable_weight" in out

        fast = ["--set", "max_steps=3", "--set", "batch_size=4", "--set", "eval_examples=4"]
        fast += ["--set", "eval_max_new_tokens=8"]
        for expected in ("v1", "v2"):
            code, out = run("train", "--project", "acme", "--kind", "sft", *fast)
            assert code == 0, out
            assert f"registered {expected}" in out and "edit distance: candidate" in out

        code, out = run("runs", "list", "--project", "acme")
        assert code == 0 and out.count("succeeded") == 2
        code, out = run("runs", "show", "1", "--project", "acme")
        assert code == 0 and '"status": "succeeded"' in out

        assert run("adapters", "promote", "v1", "--project", "acme", "--reason", "first")[0] == 0
        code, out = run("adapters", "promote", "v2", "--project", "acme", "--force")
        assert code == 1 and "reason" in out
        code, out = run("adapters", "promote", "v2", "--project", "acme", "--force", "--reason", "try it")
        assert code == 0
        code, out = run("adapters", "rollback", "--project", "acme", "--reason", "regressed")
        assert code == 0 and "production -> v1" in out
        code, out = run("adapters", "list", "--project", "acme")
        assert code == 0 and "v1" in out and "v2" in out
        code, out = run("adapters", "history", "--project", "acme")
        assert code == 0 and "regressed" in out and "try it" in out
        code, out = run("adapters", "show", "production", "--project", "acme")
        assert code == 0 and '"lineage"' in out
        code, out = run("adapters", "download", "production", "--project", "acme", "--out", str(tmp_path / "dl"))
        assert code == 0 and (tmp_path / "dl" / "v1" / "adapter_model.safetensors").is_file()
        assert run("adapters", "download", "v1", "--project", "acme", "--out", str(tmp_path / "dl"))[0] == 1
    finally:
        get_settings.cache_clear()
