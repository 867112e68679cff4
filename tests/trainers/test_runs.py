"""Training runs end to end on a tiny random model: every method trains and registers a version that loads with
PeftModel.from_pretrained, a killed run registers nothing, cancellation, QLoRA on the CPU, continuing production."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.db import session_scope
from core.errors import Conflict, InvalidInput
from core.settings import Settings
from feedback.models import DatasetSnapshot
from trainers import registry, runs
from trainers.models import AdapterVersion, TrainingRun

from .tiny import random_model, style_project

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
FAST = {"max_steps": 4, "batch_size": 4, "eval_examples": 6, "eval_max_new_tokens": 12}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("model") / "tiny")


def settings_for(url: str, tmp_path: Path, **extra) -> Settings:
    return Settings(database_url=url, data_dir=tmp_path, **extra)


def run_once(url: str, project_id: int, kind: str, settings: Settings, **overrides) -> TrainingRun:
    with session_scope(url) as session:
        run_id = runs.create_run(session, project_id, kind, overrides, actor="test").id
    runs.execute(url, run_id, settings)
    with session_scope(url) as session:
        run = runs.get_run(session, project_id, run_id)
        session.expunge(run)
    return run


def lora_b_norm(path: Path) -> float:
    from safetensors.torch import load_file

    weights = load_file(str(path / "adapter_model.safetensors"))
    return float(sum(t.float().norm() for k, t in weights.items() if "lora_B" in k))


@pytest.mark.parametrize("kind", ["reward", "dpo", "combined", "kto", "sft"])
def test_each_method_trains_and_registers_a_loadable_version(
    kind: str, sqlite_url: str, model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    url = sqlite_url
    project_id = style_project(url, model_dir)
    run = run_once(url, project_id, kind, settings_for(url, tmp_path), **FAST)
    assert run.status == "succeeded", run.error
    assert run.progress["stage"] == "done" and len(run.version_ids) == 1
    with session_scope(url) as session:
        version = session.get(AdapterVersion, run.version_ids[0])
        path = registry.verified_path(version)
        assert version.kind == ("reward" if kind == "reward" else "policy") and version.method == kind
        lineage = version.manifest["lineage"]
        assert lineage["snapshot_id"] == run.snapshot_id and lineage["snapshot_sha256"]
        assert version.manifest["config"]["seed"] == 0 and version.metrics["train"]["steps"] == 4
    # LoRA B starts at zero: a trained adapter has moved it.
    assert lora_b_norm(path) > 0
    tok = AutoTokenizer.from_pretrained(model_dir)
    inputs = tok(["# add two numbers\n"], return_tensors="pt")
    if kind == "reward":
        base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        base.config.pad_token_id = tok.pad_token_id
        loaded = PeftModel.from_pretrained(base, path)
        assert version.metrics["eval"]["reward_accuracy"]["n"] > 0
        assert "longer_wins" in version.metrics["eval"]["reward_accuracy"]["baselines"]
        return
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        before = base(**inputs).logits
        loaded = PeftModel.from_pretrained(base, path)
        after = loaded(**inputs).logits
    assert not torch.allclose(before, after)
    ev = version.metrics["eval"]
    assert set(ev["edit_replay"]) == {"candidate", "base"} and ev["edit_replay"]["candidate"]["n"] > 0
    assert ev["parse_rate"]["candidate"]["n"] == ev["edit_replay"]["candidate"]["n"]
    assert "base" in ev["edit_replay_vs"] and ev["per_example"][0]["key"]
    assert 0 <= ev["implicit_reward"]["accuracy"] <= 1


def test_sft_trains_on_accepted_code_with_sft_accepted_but_the_replay_leaves_it_out(
    sqlite_url: str, model_dir: Path, tmp_path: Path
) -> None:
    """Our own accepted code replays at distance 0 for the model that wrote it: it trains, it does not judge."""
    from datetime import timedelta

    from feedback.rows import build_rows
    from feedback.service import ingest

    from .tiny import T0

    url = sqlite_url
    project_id = style_project(url, model_dir, n=30, sft_accepted=True)
    events = []
    for i in range(30):
        gid, t = f"ok{i}", T0 + timedelta(hours=1, minutes=i)
        events.append({"event_id": f"{gid}:gen", "type": "generation", "generation_id": gid,
                       "prompt": f"def f{i}(x):\n", "completion": f"    return x + {i}\n", "model": "base",
                       "language": "python", "occurred_at": t.isoformat()})  # fmt: skip
        events.append({"event_id": f"{gid}:ok", "type": "accepted", "generation_id": gid,
                       "occurred_at": (t + timedelta(seconds=5)).isoformat()})  # fmt: skip
    with session_scope(url) as session:
        ingest(session, project_id, events, Settings())
    with session_scope(url) as session:
        build_rows(session, project_id)
    run = run_once(url, project_id, "sft", settings_for(url, tmp_path), **{**FAST, "eval_examples": 64})
    assert run.status == "succeeded", run.error
    with session_scope(url) as session:
        snapshot = session.get(DatasetSnapshot, run.snapshot_id)
        counts = snapshot.counts["sft"]
        version = session.get(AdapterVersion, run.version_ids[0])
        metrics = version.metrics
    assert metrics["train"]["train_examples"] == counts["train"] > 30  # the edited code and the accepted code
    keys = [e["key"] for e in metrics["eval"]["per_example"]]
    assert keys and counts["eval"] > len(keys)  # the eval split holds accepted code too, left out of the replay
    assert not [k for k in keys if k.startswith("sft:kept:")]


def test_pipeline_continues_production_and_compares_against_it(pg_url: str, model_dir: Path, tmp_path: Path) -> None:
    url = pg_url
    settings = settings_for(url, tmp_path)
    project_id = style_project(url, model_dir)
    first = run_once(url, project_id, "dpo", settings, **FAST)
    assert first.status == "succeeded", first.error
    with session_scope(url) as session:
        registry.promote(session, project_id, "v1", actor="test", reason="first")
    pipeline = run_once(
        url,
        project_id,
        "pipeline",
        settings,
        reward=FAST,
        policy={**FAST, "start_from": "production"},
        policy_kind="combined",
    )
    assert pipeline.status == "succeeded", pipeline.error
    assert set(pipeline.metrics) >= {"reward", "policy"}
    with session_scope(url) as session:
        reward, policy = (session.get(AdapterVersion, i) for i in pipeline.version_ids)
        assert (reward.name, reward.kind, policy.name, policy.kind) == ("v2", "reward", "v3", "policy")
        assert policy.parent_id == first.version_ids[0]
        assert policy.manifest["lineage"]["parent_version"] == "v1"
        assert policy.metrics["eval"]["production_version"] == "v1"
        assert set(policy.metrics["eval"]["edit_replay"]) == {"candidate", "base", "production"}
        # The continued adapter saved only its trained weights, not TRL's frozen reference copy.
        assert not (Path(policy.uri) / "ref").exists()


def test_one_active_run_and_clear_config_errors(sqlite_url: str, model_dir: Path, tmp_path: Path) -> None:
    url = sqlite_url
    project_id = style_project(url, model_dir, n=20)
    with session_scope(url) as session:
        with pytest.raises(InvalidInput, match=r"config\.beta"):
            runs.create_run(session, project_id, "dpo", {"beta": -1})
        with pytest.raises(InvalidInput, match=r"config\.nonsense"):
            runs.create_run(session, project_id, "sft", {"nonsense": 1})
        with pytest.raises(InvalidInput, match="kind"):
            runs.create_run(session, project_id, "ppo")
        with pytest.raises(InvalidInput, match=r"config\.policy\.beta"):
            runs.create_run(session, project_id, "pipeline", {"policy": {"beta": "x"}})
        runs.create_run(session, project_id, "sft")
    with session_scope(url) as session, pytest.raises(Conflict, match="active run"):
        runs.create_run(session, project_id, "dpo")


def test_a_run_without_a_production_adapter_to_continue_fails_clearly(
    sqlite_url: str, model_dir: Path, tmp_path: Path
) -> None:
    project_id = style_project(sqlite_url, model_dir, n=20)
    run = run_once(sqlite_url, project_id, "dpo", settings_for(sqlite_url, tmp_path), start_from="production")
    assert run.status == "failed" and "no production adapter" in run.error


def test_cancelling_a_running_run_registers_nothing(sqlite_url: str, model_dir: Path, tmp_path: Path) -> None:
    url = sqlite_url
    project_id = style_project(url, model_dir, n=30)
    with session_scope(url) as session:
        run_id = runs.create_run(session, project_id, "sft", {**FAST, "max_steps": 10_000, "epochs": 1000}).id
    import threading

    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(runs.execute(url, run_id, settings_for(url, tmp_path))))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with session_scope(url) as session:
            run = runs.get_run(session, project_id, run_id)
            if (run.progress or {}).get("step"):
                runs.cancel_run(session, project_id, run_id)
                break
        time.sleep(0.2)
    thread.join(timeout=120)
    assert result == ["cancelled"]
    with session_scope(url) as session:
        run = runs.get_run(session, project_id, run_id)
        assert run.status == "cancelled" and run.version_ids == []
        assert registry.list_versions(session, project_id) == []
        with pytest.raises(Conflict):
            runs.cancel_run(session, project_id, run_id)


def test_a_run_killed_mid_way_registers_nothing_and_is_requeued(pg_url: str, model_dir: Path, tmp_path: Path) -> None:
    url = pg_url
    project_id = style_project(url, model_dir, n=30)
    with session_scope(url) as session:
        run_id = runs.create_run(session, project_id, "dpo", {**FAST, "max_steps": 10_000, "epochs": 1000}).id
    env = {**os.environ, "EDITLOOP_DATABASE_URL": url, "EDITLOOP_DATA_DIR": str(tmp_path)}
    code = f"from trainers import runs; runs.execute({url!r}, {run_id})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with session_scope(url) as session:
                run = runs.get_run(session, project_id, run_id)
                if (run.progress or {}).get("step", 0) >= 2:
                    break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    staging = tmp_path / "artifacts" / "staging"
    assert any(staging.iterdir())  # the dead run's work directory is still there

    settings = settings_for(url, tmp_path, run_heartbeat_stale_s=0.001, run_max_attempts=2)
    with session_scope(url) as session:
        assert runs.reap(session, settings) == [run_id]
    with session_scope(url) as session:
        run = runs.get_run(session, project_id, run_id)
        assert run.status == "queued" and run.attempts == 1 and "worker lost" in run.progress["reason"]
        assert registry.list_versions(session, project_id) == []
    assert not any(p.name.startswith(f".tmp-run{run_id}-") for p in staging.iterdir())

    # Killed again on its last attempt: failed, still nothing registered.
    with session_scope(url) as session:
        assert runs.claim(session, run_id)
    with session_scope(url) as session:
        assert runs.reap(session, settings) == [run_id]
    with session_scope(url) as session:
        run = runs.get_run(session, project_id, run_id)
        assert run.status == "failed" and "worker lost" in run.error and run.attempts == 2
        assert registry.list_versions(session, project_id) == []


def test_qlora_4bit_base_on_the_cpu(sqlite_url: str, model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    project_id = style_project(sqlite_url, model_dir, n=20)
    run = run_once(sqlite_url, project_id, "dpo", settings_for(sqlite_url, tmp_path), **FAST, quantization="4bit")
    assert run.status == "succeeded", run.error
    with session_scope(sqlite_url) as session:
        version = session.get(AdapterVersion, run.version_ids[0])
        assert version.manifest["config"]["quantization"] == "4bit"
        path = registry.verified_path(version)
    assert lora_b_norm(path) > 0
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), path)  # loads on a full base too


def test_the_scheduled_trigger_runs_the_pipeline_and_auto_promotes(
    sqlite_url: str, model_dir: Path, tmp_path: Path
) -> None:
    from trainers.triggers import check_trigger

    url = sqlite_url
    project_id = style_project(
        url,
        model_dir,
        n=30,
        settings={"auto_promote": "production", "pipeline": {"reward": FAST, "policy": FAST, "policy_kind": "sft"}},
        retrain_min_new_rows=10,
    )
    with session_scope(url) as session:
        run = check_trigger(session, project_id)
        assert run is not None and run.kind == "pipeline" and run.config["policy"] == FAST
        run_id = run.id
    assert runs.execute(url, run_id, settings_for(url, tmp_path)) == "succeeded"
    assert runs.execute(url, run_id, settings_for(url, tmp_path)) == "skipped"  # a duplicate message
    with session_scope(url) as session:
        run = runs.get_run(session, project_id, run_id)
        assert run.metrics["promotion"]["promoted"], run.metrics["promotion"]
        production = registry.get_version(session, project_id, "production")
        assert production.id == run.version_ids[-1] and production.method == "sft"
        assert registry.history(session, project_id)[0].actor == f"pipeline run {run_id}"


def test_a_version_is_evaluated_again_when_production_moved(sqlite_url: str, model_dir: Path, tmp_path: Path) -> None:
    """v2 was trained before v1 became production, and v1's own evaluation covers only some of v2's eval examples:
    the gate refuses to compare across prompts and names the command; `editloop adapters evaluate v2` (this service)
    generates with v2, the base and v1 on v2's examples, and the gate then pairs on all of them."""
    from trainers.reevaluate import evaluate_version

    url = sqlite_url
    settings = settings_for(url, tmp_path)
    project_id = style_project(url, model_dir)
    assert run_once(url, project_id, "sft", settings, **{**FAST, "eval_examples": 3}).status == "succeeded"
    assert run_once(url, project_id, "sft", settings, **FAST).status == "succeeded"
    with session_scope(url) as session:
        registry.promote(session, project_id, "v1", actor="test", reason="first", force=True)
    with session_scope(url) as session, pytest.raises(Conflict, match="editloop adapters evaluate v2"):
        registry.promote(session, project_id, "v2", actor="test")

    result = evaluate_version(url, project_id, "v2", "test")
    assert (result["version"], result["production"], result["examples"]) == ("v2", "v1", 6)
    with session_scope(url) as session:
        try:
            verdict = registry.promote(session, project_id, "v2", actor="test").gate
        except registry.PromotionRefused as exc:  # on its merits: a random model's generations
            verdict = exc.verdict
    versus = verdict["against"]["production"]
    assert versus["version"] == "v1" and versus["source"] == "v2's evaluation"
    assert versus["measures"]["edit_distance"]["n"] == verdict["examples"]["n"] == 6
