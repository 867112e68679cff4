"""Live per-version metrics and the canary policy: the statistics on known values, the metrics on generations ingested
through the real feedback path, and the policy moving real registry aliases."""

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from core import artifacts
from core.db import session_scope
from core.errors import NotFound
from core.projects import Project, create_project
from core.settings import Settings
from feedback.service import ingest
from trainers import canary, registry, tasks
from trainers.config import model_settings

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
COMPLETION = "abcdefghij"  # 10 characters: replacing k of them is a normalized edit distance of k / 10


# --- helpers shared with tests/api/test_live_api.py ----------------------------------------------------------------


def lora_adapter(out: Path, r: int = 4, seed: int = 0) -> Path:
    """A PEFT LoRA adapter for the architecture of tiny.random_model (q_proj and v_proj of its 2 layers), initialised
    as PEFT initialises one (A random, B zero), written with numpy so that these tests need not import torch."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    hidden, layers, outputs = 64, 2, {"q_proj": 64, "v_proj": 32}
    tensors = {}
    for layer in range(layers):
        for module, width in outputs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            bound = 1 / np.sqrt(hidden)
            tensors[f"{prefix}.lora_A.weight"] = rng.uniform(-bound, bound, (r, hidden)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((width, r), dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tests/trainers/tiny.py:random_model",
        "r": r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.0,
        "target_modules": sorted(outputs),
        "bias": "none",
        "inference_mode": True,
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def publish(session: Session, root: Path, project_id: int, adapter: Path, distance: float = 0.3) -> str:
    """Register a copy of `adapter` as the project's next policy version, evaluated like every other one (so the
    offline promotion gate sees no difference between them, unless `distance`, their edit replay distance, differs)."""
    staging = artifacts.staging_dir(root / "staging", "live")
    for path in adapter.iterdir():
        shutil.copy2(path, staging / path.name)
    per_example = [
        {"key": f"k{i}", "distance": distance + 0.01 * (i % 5), "parses": 1.0, "base_distance": 0.6, "base_parses": 1.0}
        for i in range(20)
    ]
    version = registry.register(
        session,
        root,
        project_id,
        staging,
        kind="policy",
        method="dpo",
        run_id=None,
        snapshot=None,
        parent=None,
        base_model="tiny",
        base_revision=None,
        config={"seed": 0},
        metrics={"eval": {"per_example": per_example}},
    )
    return version.name


def served(
    model: str,
    *,
    accepted: int = 0,
    rejected: int = 0,
    edited: list[int] | None = None,
    shown: int = 0,
    start: datetime = T0,
) -> list[dict[str, Any]]:
    """Generation events stamped `model`, each followed by its feedback: `edited` lists how many characters of the
    completion each edit replaced. An accepted-then-edited generation counts as edited."""
    events: list[dict[str, Any]] = []
    kinds = ["accepted"] * accepted + ["rejected"] * rejected + ["edited"] * len(edited or []) + ["shown"] * shown
    changes = iter(edited or [])
    for i, kind in enumerate(kinds):
        gid = f"{model}-{uuid.uuid4().hex[:10]}"
        t = start + timedelta(seconds=i)
        events.append(
            {
                "event_id": f"{gid}:gen",
                "type": "generation",
                "generation_id": gid,
                "occurred_at": t.isoformat(),
                "prompt": "x = ",
                "completion": COMPLETION,
                "model": model,
            }
        )
        later = (t + timedelta(milliseconds=500)).isoformat()
        if kind in ("accepted", "rejected"):
            events.append({"event_id": f"{gid}:{kind}", "type": kind, "generation_id": gid, "occurred_at": later})
        elif kind == "edited":
            k = next(changes)
            final = "Z" * k + COMPLETION[k:]
            events.append({"event_id": f"{gid}:acc", "type": "accepted", "generation_id": gid, "occurred_at": later})
            events.append(
                {
                    "event_id": f"{gid}:edit",
                    "type": "edited",
                    "generation_id": gid,
                    "occurred_at": later,
                    "final_text": final,
                }
            )
    return events


# --- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lora_adapter(tmp_path_factory.mktemp("lora") / "adapter")


def new_project(url: str, policy: str = "both", min_samples: int = 50, alpha: float = 0.05) -> int:
    with session_scope(url) as session:
        project = create_project(session, f"live-{uuid.uuid4().hex[:10]}")
        model = {"canary_policy": policy, "canary_min_samples": min_samples, "canary_alpha": alpha}
        project.settings = {"model": model}
        session.flush()
        return project.id


def send(url: str, project_id: int, events: list[dict[str, Any]]) -> None:
    with session_scope(url) as session:
        result = ingest(session, project_id, events, Settings())
        assert not result.errors, result.errors


def production_and_canary(url: str, root: Path, project_id: int, adapter: Path) -> tuple[str, str]:
    """v1 production since a day before T0, v2 canary since T0."""
    with session_scope(url) as session:
        prod, canary_name = publish(session, root, project_id, adapter), publish(session, root, project_id, adapter)
        registry.promote(session, project_id, prod, actor="t", now=T0 - timedelta(days=1))
        registry.promote(session, project_id, canary_name, alias="canary", actor="t", now=T0)
    return prod, canary_name


# --- statistics -----------------------------------------------------------------------------------------------------


def test_wilson_interval_known_values() -> None:
    r = canary.wilson(50, 100)
    assert (
        r["rate"] == 0.5
        and r["low"] == pytest.approx(0.40383, abs=1e-4)
        and r["high"] == pytest.approx(0.59617, abs=1e-4)
    )
    r = canary.wilson(0, 10)
    assert r["low"] == 0.0 and r["high"] == pytest.approx(0.27753, abs=1e-4)
    r = canary.wilson(30, 100)
    assert (r["low"], r["high"]) == pytest.approx((0.21887, 0.39585), abs=1e-4)
    assert canary.wilson(0, 0)["rate"] is None


def test_two_proportion_tests_known_values() -> None:
    z = canary.two_proportions(60, 100, 40, 100)
    assert z["method"].startswith("two-proportion z-test")
    assert z["statistic"] == pytest.approx(2.82843, abs=1e-4) and z["p_value"] == pytest.approx(0.004678, abs=1e-5)
    # The lady tasting tea: 3 of 4 against 1 of 4, two-sided p = 34/70.
    fisher = canary.two_proportions(3, 4, 1, 4)
    assert fisher["method"].startswith("Fisher's exact test") and fisher["statistic"] == pytest.approx(9.0)
    assert fisher["p_value"] == pytest.approx(34 / 70)
    assert canary.two_proportions(8, 10, 1, 6)["p_value"] == pytest.approx(0.034965, abs=1e-5)
    assert canary.two_proportions(3, 3, 0, 3)["statistic"] is None  # a zero cell: no finite odds ratio
    assert canary.two_proportions(1, 2, 0, 0)["p_value"] is None


def test_mann_whitney_exact_and_normal_known_values(monkeypatch: pytest.MonkeyPatch) -> None:
    r = canary.mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert r["statistic"] == 0 and r["p_value"] == pytest.approx(0.1) and "exact over 20" in r["method"]
    males, females = [19.0, 22.0, 16.0, 29.0, 24.0], [20.0, 11.0, 17.0, 12.0]
    r = canary.mann_whitney(males, females)
    assert r["statistic"] == 17 and r["p_value"] == pytest.approx(14 / 126)
    monkeypatch.setattr(canary, "EXACT_MAX_ARRANGEMENTS", 0)
    r = canary.mann_whitney(males, females)
    assert "normal approximation" in r["method"] and r["p_value"] == pytest.approx(0.111347, abs=1e-5)
    assert canary.mann_whitney([0.5] * 30, [0.5] * 30)["p_value"] == 1.0
    assert canary.mann_whitney([], [0.1])["p_value"] is None


# --- metrics from ingested feedback ----------------------------------------------------------------------------------


def test_version_metrics_from_known_counts(db_url: str, tmp_path: Path, adapter: Path) -> None:
    pid = new_project(db_url)
    with session_scope(db_url) as session:
        v1 = publish(session, tmp_path, pid, adapter)
        registry.promote(session, pid, v1, actor="t")
    edits = [1, 2, 3] * 10  # 30 edits, mean distance 0.2
    send(db_url, pid, served(v1, accepted=50, rejected=20, edited=edits, shown=10))
    send(db_url, pid, served(v1, accepted=5, start=T0 + timedelta(hours=1)))
    send(db_url, pid, served("base", rejected=4))

    with session_scope(db_url) as session:
        m = canary.version_metrics(session, pid, "production")
        assert (m["model"], m["served"], m["with_feedback"]) == (v1, 115, 105)
        assert (m["accepted"], m["edited"], m["rejected"]) == (55, 30, 20)
        assert m["acceptance_rate"]["rate"] == pytest.approx(55 / 105)
        assert m["edit_rate"]["rate"] == pytest.approx(30 / 105)
        assert m["edit_distance"]["mean"] == pytest.approx(0.2) and m["edit_distance"]["n"] == 30
        assert 0.1 < m["edit_distance"]["low"] < 0.2 < m["edit_distance"]["high"] < 0.3

        window = canary.version_metrics(session, pid, v1, since=T0 + timedelta(minutes=30))
        assert (window["served"], window["accepted"], window["edited"]) == (5, 5, 0)
        assert window["acceptance_rate"]["rate"] == 1.0 and window["edit_distance"]["mean"] is None
        naive = canary.version_metrics(session, pid, v1, since=datetime(2026, 11, 2, 9, 30))
        assert naive["served"] == 5

        base = canary.version_metrics(session, pid, "base")
        assert (base["served"], base["rejected"], base["acceptance_rate"]["rate"]) == (4, 4, 0.0)
        with pytest.raises(NotFound, match="'v9'"):
            canary.version_metrics(session, pid, "v9")
        with pytest.raises(NotFound, match="canary"):
            canary.version_metrics(session, pid, "canary")


def test_latency_percentiles_and_cost_per_target_agree_on_both_backends(db_url: str) -> None:
    """Nearest-rank p50 / p95 (Postgres' percentile_disc, Python's own on SQLite) and cost from each generation's
    recorded `gateway.cost`; several targets in one call give what each gives alone."""
    pid = new_project(db_url)
    events = []
    for model, latencies, cost in (("base", range(1, 21), 0.002), ("upstream", range(100, 111), None)):
        batch = served(model, accepted=len(latencies))
        generations = [e for e in batch if e["type"] == "generation"]
        for event, latency in zip(generations, latencies, strict=True):
            event["latency_ms"] = float(latency)
            if cost is not None:
                event["metadata"] = {"gateway": {"cost": cost}}
        generations[0].setdefault("metadata", {})["gateway"] = {"cost": "not a number"}  # ignored, not an error
        events += batch
    send(db_url, pid, events)
    with session_scope(db_url) as session:
        both = canary.versions_metrics(session, pid, ["base", "upstream"])
        for ref in ("base", "upstream"):
            alone = canary.version_metrics(session, pid, ref)
            assert alone == both[ref]
    base, upstream = both["base"], both["upstream"]
    assert base["latency_ms"] == {"n": 20, "p50": 10.0, "p95": 19.0}  # ranks ceil(0.5 * 20) and ceil(0.95 * 20)
    assert upstream["latency_ms"] == {"n": 11, "p50": 105.0, "p95": 110.0}
    assert base["cost"]["priced"] == 19 and base["cost"]["total"] == pytest.approx(19 * 0.002)
    assert base["cost"]["per_1k_generations"] == pytest.approx(2.0)
    assert base["cost"]["per_accepted"] == pytest.approx(0.002 * 20 / 20)  # unpriced ones at the priced mean
    assert upstream["cost"] == {"priced": 0, "total": None, "per_1k_generations": None, "per_accepted": None}


def test_compare_names_its_tests_and_judges(db_url: str, tmp_path: Path, adapter: Path) -> None:
    pid = new_project(db_url, min_samples=20)
    prod, canary_name = production_and_canary(db_url, tmp_path, pid, adapter)
    send(db_url, pid, served(canary_name, accepted=40, rejected=10, edited=[1] * 25, start=T0 + timedelta(hours=1)))
    send(db_url, pid, served(prod, accepted=15, rejected=35, edited=[5] * 25, start=T0 + timedelta(hours=1)))
    with session_scope(db_url) as session:
        c = canary.compare(session, pid, "canary", "production")
    acc, edit, dist = (c["tests"][k] for k in ("acceptance_rate", "edit_rate", "edit_distance"))
    assert c["verdict"] == acc["verdict"] == "better" and acc["method"].startswith("mixture sequential")
    assert acc["difference"] == pytest.approx(40 / 75 - 15 / 75) and acc["p_value"] < 0.01 and acc["low"] > 0
    assert edit["verdict"] == "no significant difference" and edit["p_value"] == pytest.approx(1.0)
    assert dist["verdict"] == "better" and dist["method"].startswith("Mann-Whitney") and dist["difference"] < 0
    assert dist["n"] == [25, 25] and (c["alpha"], c["min_samples"]) == (0.05, 20)

    with session_scope(db_url) as session:
        strict = canary.compare(session, pid, prod, canary_name, min_samples=80)
    assert strict["verdict"] == "not enough data" and strict["tests"]["acceptance_rate"]["p_value"] < 0.01
    with session_scope(db_url) as session:
        reverse = canary.compare(session, pid, prod, canary_name, alpha=0.01)
    assert reverse["verdict"] == "worse" and reverse["tests"]["edit_distance"]["verdict"] == "worse"


# --- the canary policy ---------------------------------------------------------------------------------------------


def aliases(url: str, pid: int) -> dict[str, str]:
    with session_scope(url) as session:
        return {alias: registry.get_version(session, pid, alias).name for alias in registry.aliases(session, pid)}


def test_a_clearly_better_canary_is_promoted(db_url: str, tmp_path: Path, adapter: Path) -> None:
    pid = new_project(db_url)
    prod, canary_name = production_and_canary(db_url, tmp_path, pid, adapter)
    # Before it was the canary, v2's generations fared badly: the window starts when the canary alias moved.
    send(db_url, pid, served(canary_name, rejected=60, start=T0 - timedelta(hours=2)))
    send(db_url, pid, served(canary_name, accepted=48, rejected=12, start=T0 + timedelta(minutes=1)))
    send(db_url, pid, served(prod, accepted=12, rejected=48, start=T0 + timedelta(minutes=1)))
    with session_scope(db_url) as session:
        decision = canary.apply_canary_policy(session, pid)
    assert decision["action"] == "promoted", decision["reason"]
    assert decision["comparison"]["tests"]["acceptance_rate"]["n"] == [60, 60]
    assert aliases(db_url, pid) == {"production": canary_name}
    with session_scope(db_url) as session:
        clear, promote = registry.history(session, pid)[:2]
        assert (promote.action, promote.alias, promote.actor) == ("promote", "production", "canary-policy")
        assert "mixture sequential" in (promote.reason or "") and promote.gate["passed"]
        live_test = promote.gate["live"]["tests"]["acceptance_rate"]
        assert live_test["p_value"] < 0.05 and live_test["method"].startswith("mixture sequential")
        assert promote.gate["live"]["since"].startswith("2026-11-02T09:00")
        assert (clear.action, clear.alias) == ("clear", "canary")
    with session_scope(db_url) as session:
        assert canary.apply_canary_policy(session, pid)["reason"] == "no canary"


def test_a_clearly_worse_canary_is_rolled_back(db_url: str, tmp_path: Path, adapter: Path) -> None:
    pid = new_project(db_url)
    prod, canary_name = production_and_canary(db_url, tmp_path, pid, adapter)
    send(db_url, pid, served(canary_name, accepted=10, rejected=20, edited=[4] * 30, start=T0 + timedelta(minutes=1)))
    send(db_url, pid, served(prod, accepted=40, rejected=10, edited=[1] * 10, start=T0 + timedelta(minutes=1)))
    with session_scope(db_url) as session:
        decision = canary.apply_canary_policy(session, pid)
    assert decision["action"] == "rolled_back", decision["reason"]
    assert aliases(db_url, pid) == {"production": prod}
    with session_scope(db_url) as session:
        event = registry.history(session, pid, "canary")[0]
        assert (event.action, event.actor) == ("clear", "canary-policy")
        assert registry.get_version(session, pid, "v2").id == event.version_id
        assert event.gate["live"]["verdict"] == "worse" and "significantly worse" in (event.reason or "")


def test_equal_versions_or_too_little_data_change_nothing(db_url: str, tmp_path: Path, adapter: Path) -> None:
    pid = new_project(db_url)
    prod, canary_name = production_and_canary(db_url, tmp_path, pid, adapter)
    send(db_url, pid, served(canary_name, accepted=30, rejected=30, start=T0 + timedelta(minutes=1)))
    send(db_url, pid, served(prod, accepted=31, rejected=29, start=T0 + timedelta(minutes=1)))
    with session_scope(db_url) as session:
        decision = canary.apply_canary_policy(session, pid)
    assert decision["action"] == "none" and decision["reason"].startswith("no significant difference")
    assert aliases(db_url, pid) == {"production": prod, "canary": canary_name}

    few = new_project(db_url, min_samples=50)
    prod, canary_name = production_and_canary(db_url, tmp_path, few, adapter)
    send(db_url, few, served(canary_name, accepted=30, start=T0 + timedelta(minutes=1)))
    send(db_url, few, served(prod, rejected=30, start=T0 + timedelta(minutes=1)))
    with session_scope(db_url) as session:
        decision = canary.apply_canary_policy(session, few)
    assert decision["action"] == "none" and decision["reason"].startswith("not enough data: 30 and 30")
    assert decision["comparison"]["tests"]["acceptance_rate"]["p_value"] < 1e-6  # stark, but too few to act on
    assert aliases(db_url, few) == {"production": prod, "canary": canary_name}


def test_the_policy_acts_only_as_configured(db_url: str, tmp_path: Path, adapter: Path) -> None:
    """A promote-only policy leaves a worse canary alone; off does nothing; the tick applies each project's own."""
    promote_only, off = new_project(db_url, policy="promote"), new_project(db_url, policy="off")
    for pid in (promote_only, off):
        prod, canary_name = production_and_canary(db_url, tmp_path, pid, adapter)
        send(db_url, pid, served(canary_name, accepted=5, rejected=55, start=T0 + timedelta(minutes=1)))
        send(db_url, pid, served(prod, accepted=55, rejected=5, start=T0 + timedelta(minutes=1)))
    with session_scope(db_url) as session:
        decision = canary.apply_canary_policy(session, promote_only)
        assert decision["action"] == "none" and decision["reason"].startswith("worse (promote policy")
        assert canary.apply_canary_policy(session, off)["reason"] == "the canary policy is off"

    rollback_only = new_project(db_url, policy="rollback")
    prod, canary_name = production_and_canary(db_url, tmp_path, rollback_only, adapter)
    send(db_url, rollback_only, served(canary_name, accepted=5, rejected=55, start=T0 + timedelta(minutes=1)))
    send(db_url, rollback_only, served(prod, accepted=55, rejected=5, start=T0 + timedelta(minutes=1)))
    with session_scope(db_url) as session:
        projects = [
            (p.id, p.settings) for p in map(session.get, [Project] * 3, (off, rollback_only, promote_only)) if p
        ]
    projects.insert(0, (promote_only, {"model": {"canary_policy": "sometimes"}}))  # invalid: logged, skipped
    decisions = tasks.apply_canary_policies(db_url, projects)
    assert [(d["project_id"], d["action"]) for d in decisions] == [
        (rollback_only, "rolled_back"),
        (promote_only, "none"),
    ]
    assert aliases(db_url, rollback_only) == {"production": prod}


def test_a_better_canary_that_the_offline_gate_refuses_is_blocked(db_url: str, tmp_path: Path, adapter: Path) -> None:
    """The policy never forces a promotion: a canary forced past the gate stays a canary however well it does."""
    pid = new_project(db_url)
    with session_scope(db_url) as session:
        prod = publish(session, tmp_path, pid, adapter, distance=0.2)
        canary_name = publish(session, tmp_path, pid, adapter, distance=0.6)
        registry.promote(session, pid, prod, actor="t", now=T0 - timedelta(days=1))
        registry.promote(session, pid, canary_name, alias="canary", actor="t", reason="try it", force=True, now=T0)
    send(db_url, pid, served(canary_name, accepted=50, rejected=10, start=T0 + timedelta(minutes=1)))
    send(db_url, pid, served(prod, accepted=10, rejected=50, start=T0 + timedelta(minutes=1)))
    with session_scope(db_url) as session:
        decision = canary.apply_canary_policy(session, pid)
    assert decision["action"] == "blocked" and "edit replay distance is higher" in decision["reason"]
    assert aliases(db_url, pid) == {"production": prod, "canary": canary_name}


def test_the_scheduled_tick_applies_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter: Path) -> None:
    """schedule_tick on a database of its own (it visits every project): a worse canary is rolled back."""
    from core import migrate
    from core.settings import get_settings

    url = f"sqlite:///{tmp_path / 'tick.db'}"
    migrate.upgrade(url)
    monkeypatch.setenv("EDITLOOP_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        pid, idle = new_project(url), new_project(url, policy="off")
        for project_id in (pid, idle):
            prod, canary_name = production_and_canary(url, tmp_path, project_id, adapter)
            send(url, project_id, served(canary_name, accepted=5, rejected=55, start=T0 + timedelta(minutes=1)))
            send(url, project_id, served(prod, accepted=55, rejected=5, start=T0 + timedelta(minutes=1)))
        assert tasks.schedule_tick() == 2
    finally:
        get_settings.cache_clear()
    assert aliases(url, pid) == {"production": "v1"}  # the canary v2 was rolled back
    assert aliases(url, idle) == {"production": "v1", "canary": "v2"}


def test_the_adaptive_share_grows_when_the_canary_leads(
    db_url: str, tmp_path: Path, adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = new_project(db_url, min_samples=20)
    prod, canary_name = production_and_canary(db_url, tmp_path, pid, adapter)
    with session_scope(db_url) as session:
        project = session.get(Project, pid)
        assert project is not None
        project.settings = {"model": {**project.settings["model"], "canary_adaptive_share": True}}
    send(db_url, pid, served(canary_name, accepted=20, rejected=20, start=T0 + timedelta(minutes=1)))
    send(db_url, pid, served(prod, accepted=10, rejected=30, start=T0 + timedelta(minutes=1)))
    monkeypatch.setattr(canary, "_shares", {})
    with session_scope(db_url) as session:
        project = session.get(Project, pid)
        assert project is not None
        settings = model_settings(project.settings)
        canary.version_metrics(session, pid, canary_name)  # folds what Postgres queued (the share reads as folded)
        share = canary.canary_share(session, pid, canary_name, settings)
        assert settings.canary_share < share < settings.canary_share_max
        fixed = settings.model_copy(update={"canary_adaptive_share": False})
        assert canary.canary_share(session, pid, canary_name, fixed) == settings.canary_share
