"""The adapter registry without training: publishing, checksums, the promotion gate, aliases and their history."""

import json
import threading
import uuid
from pathlib import Path

import pytest

from core import artifacts
from core.db import session_scope
from core.errors import Conflict, InvalidInput, NotFound
from core.projects import create_project
from trainers import gate, registry
from trainers.models import AdapterAlias, AliasEvent


def project(url: str) -> int:
    with session_scope(url) as session:
        return create_project(session, f"r-{uuid.uuid4().hex[:10]}").id


def evaluated(
    distances: list[float],
    parses: list[float] | None = None,
    prefix: str = "k",
    base: list[float] | None = None,
    production: tuple[str, list[float]] | None = None,
) -> dict:
    """Stored metrics as the evaluation writes them: per example, the candidate's distance (and parse flag), the
    base's (`base`, default: the candidate's own) and, with `production` = (name, distances), production's."""
    rows = []
    for i, d in enumerate(distances):
        row = {"key": f"{prefix}{i}", "distance": d, "base_distance": (base or distances)[i]}
        if parses is not None:
            row["parses"] = row["base_parses"] = parses[i]
        if production is not None:
            row["production_distance"] = production[1][i]
        rows.append(row)
    out: dict = {"eval": {"per_example": rows}}
    if production is not None:
        out["eval"]["production_version"] = production[0]
    return out


def publish(url: str, root: Path, project_id: int, metrics: dict | None = None, kind: str = "policy"):
    staging = artifacts.staging_dir(root / "staging", "test")
    (staging / "adapter_config.json").write_text(json.dumps({"r": 8, "nonce": uuid.uuid4().hex}))
    (staging / "adapter_model.safetensors").write_bytes(uuid.uuid4().bytes * 100)
    with session_scope(url) as session:
        version = registry.register(
            session,
            root,
            project_id,
            staging,
            kind=kind,
            method="dpo" if kind == "policy" else "reward",
            run_id=None,
            snapshot=None,
            parent=None,
            base_model="tiny",
            base_revision=None,
            config={"seed": 0},
            metrics=metrics if metrics is not None else evaluated([0.3] * 20),
        )
        return version.name


def test_versions_are_numbered_published_and_verified(db_url: str, tmp_path: Path) -> None:
    pid = project(db_url)
    names = [publish(db_url, tmp_path, pid) for _ in range(3)]
    assert names == ["v1", "v2", "v3"]
    with session_scope(db_url) as session:
        version = registry.get_version(session, pid, "v2")
        path = registry.verified_path(version)
        manifest = json.loads((path / "manifest.json").read_text())
        assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
        assert manifest["lineage"]["base_model"] == "tiny" and manifest["lineage"]["code_revision"]
        assert manifest["lineage"]["libraries"]["torch"]
        assert [v.name for v in registry.list_versions(session, pid)] == ["v3", "v2", "v1"]
    assert not list((tmp_path / "staging").iterdir())  # staging renamed away, nothing left behind

    (path / "adapter_model.safetensors").write_bytes(b"tampered")
    with session_scope(db_url) as session, pytest.raises(artifacts.ChecksumMismatch, match="sha256 differs"):
        registry.verified_path(registry.get_version(session, pid, "v2"))
    (path / "extra.bin").write_bytes(b"x")
    with pytest.raises(artifacts.ChecksumMismatch):
        artifacts.verify(path)


def test_an_unregistered_directory_is_set_aside_not_served(db_url: str, tmp_path: Path) -> None:
    """A crash after publishing but before the row committed leaves a directory no row points at."""
    pid = project(db_url)
    orphan = registry.project_dir(tmp_path, pid) / "v1"
    orphan.mkdir(parents=True)
    (orphan / "adapter_model.safetensors").write_bytes(b"half a run")
    assert publish(db_url, tmp_path, pid) == "v1"
    with session_scope(db_url) as session:
        registry.verified_path(registry.get_version(session, pid, "v1"))
    assert any(p.name.startswith(".tmp-orphan-v1") for p in orphan.parent.iterdir())


def test_promotion_gate_refuses_a_worse_version_unless_forced_with_a_reason(db_url: str, tmp_path: Path) -> None:
    pid = project(db_url)
    good = publish(db_url, tmp_path, pid, evaluated([0.2 + 0.01 * (i % 5) for i in range(30)], [1.0] * 30))
    worse = publish(db_url, tmp_path, pid, evaluated([0.5 + 0.01 * (i % 5) for i in range(30)], [1.0] * 30))
    broken = publish(db_url, tmp_path, pid, evaluated([0.2 + 0.01 * (i % 5) for i in range(30)], [0.0] * 30))
    similar = publish(db_url, tmp_path, pid, evaluated([0.2 + 0.01 * ((i + 2) % 5) for i in range(30)], [1.0] * 30))
    with session_scope(db_url) as session:
        event = registry.promote(session, pid, good, actor="alice", reason="first")
        assert event.gate["passed"] and event.previous_version_id is None
    with session_scope(db_url) as session, pytest.raises(Conflict, match="edit replay distance is higher"):
        registry.promote(session, pid, worse, actor="alice")
    with session_scope(db_url) as session, pytest.raises(Conflict, match="parse rate is lower"):
        registry.promote(session, pid, broken, actor="alice")
    with session_scope(db_url) as session, pytest.raises(InvalidInput, match="reason"):
        registry.promote(session, pid, worse, actor="alice", force=True)
    with session_scope(db_url) as session:
        event = registry.promote(session, pid, similar, actor="bob", reason="same within noise")
        assert event.gate["passed"] and event.gate["against"]["production"]["measures"]["edit_distance"]["paired"]
    with session_scope(db_url) as session:
        event = registry.promote(session, pid, worse, actor="carol", reason="incident 42", force=True)
        assert event.forced and not event.gate["passed"]
        assert registry.get_version(session, pid, "production").name == worse

    with session_scope(db_url) as session:
        registry.rollback(session, pid, actor="dave", reason="bad canary numbers")
        assert registry.get_version(session, pid, "production").name == similar
        history = registry.history(session, pid, "production")
        assert [(e.action, e.actor) for e in history] == [
            ("rollback", "dave"),
            ("promote", "carol"),
            ("promote", "bob"),
            ("promote", "alice"),
        ]
        assert history[1].reason == "incident 42"


def test_aliases_and_errors(db_url: str, tmp_path: Path) -> None:
    pid = project(db_url)
    with session_scope(db_url) as session:
        with pytest.raises(NotFound):
            registry.get_version(session, pid, "production")
        with pytest.raises(NotFound):
            registry.rollback(session, pid, actor="x")
    v1 = publish(db_url, tmp_path, pid)
    reward = publish(db_url, tmp_path, pid, kind="reward")
    unevaluated = publish(db_url, tmp_path, pid, metrics={})
    with session_scope(db_url) as session:
        with pytest.raises(InvalidInput, match="reward model"):
            registry.promote(session, pid, reward, actor="x")
        with pytest.raises(InvalidInput, match="alias"):
            registry.promote(session, pid, v1, alias="staging", actor="x")
        with pytest.raises(Conflict, match="no evaluation"):
            registry.promote(session, pid, unevaluated, actor="x")
        registry.promote(session, pid, v1, alias="canary", actor="x")
    with session_scope(db_url) as session, pytest.raises(Conflict, match="already points"):
        registry.promote(session, pid, v1, alias="canary", actor="x")
    with session_scope(db_url) as session, pytest.raises(Conflict, match="no earlier version"):
        registry.rollback(session, pid, alias="canary", actor="x")
    other = project(db_url)
    with session_scope(db_url) as session, pytest.raises(NotFound):
        registry.get_version(session, other, v1)  # another project's version is not found, never served


def test_concurrent_promotions_leave_exactly_one_production(pg_url: str, tmp_path: Path) -> None:
    pid = project(pg_url)
    names = [publish(pg_url, tmp_path, pid) for _ in range(6)]
    barrier = threading.Barrier(len(names))
    errors: list[Exception] = []

    def promote(name: str) -> None:
        barrier.wait()
        try:
            with session_scope(pg_url) as session:
                registry.promote(session, pid, name, actor=f"t-{name}", reason="race")
        except Exception as exc:  # noqa: BLE001 (collected and checked below)
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with session_scope(pg_url) as session:
        rows = session.query(AdapterAlias).filter_by(project_id=pid, alias="production").all()
        assert len(rows) == 1
        events = session.query(AliasEvent).filter_by(project_id=pid).order_by(AliasEvent.id).all()
        assert len(events) == 6
        # Serialized: each move saw the previous one, so the chain of previous versions has no gaps or forks.
        assert events[0].previous_version_id is None
        for before, after in zip(events, events[1:], strict=False):
            assert after.previous_version_id == before.version_id
        assert rows[0].version_id == events[-1].version_id


def test_gate_statistics() -> None:
    def check(candidate: dict, production: dict | None = None, **tolerances: float | None) -> dict:
        prod = gate.Evaluated("v1", production) if production is not None else None
        return gate.check(gate.Evaluated("v2", candidate), prod, tolerances)

    worse = check(evaluated([0.6] * 10 + [0.7] * 10), evaluated([0.3] * 10 + [0.4] * 10))
    versus = worse["against"]["production"]
    assert not worse["passed"] and versus["measures"]["edit_distance"]["worse"]
    assert (
        versus["measures"]["edit_distance"]["paired"] and versus["source"] == "v1's own evaluation of the same examples"
    )
    assert check(evaluated([0.1] * 20), evaluated([0.3] * 20))["passed"]
    # No production: still compared with the base, on the same examples.
    first = check(evaluated([0.6] * 10 + [0.7] * 10, base=[0.1] * 20))
    assert not first["passed"] and "than base's beyond noise" in first["reasons"][0]
    assert set(first["against"]) == {"base"} and first["against"]["base"]["measures"]["edit_distance"]["n"] == 20
    assert check(evaluated([0.5] * 3))["passed"]
    assert not check({}, evaluated([0.5] * 3))["passed"]
    # A tolerance lets a small loss pass; None turns the measure off.
    assert check(evaluated([0.32] * 20, base=[0.3] * 20), edit_distance=0.05)["passed"]
    assert check(evaluated([0.9] * 20, base=[0.3] * 20), edit_distance=None)["passed"]


def test_the_gate_calls_nothing_worse_on_too_few_examples_to_tell() -> None:
    """Four examples all worse put the bootstrap's interval above zero, but four of a kind come up one time in eight
    by chance: the sign-flip test keeps the gate from refusing on that; eight of eight (p = 1/128) it refuses."""

    def verdict(n: int) -> dict:
        return gate.check(gate.Evaluated("v2", evaluated([0.5] * n, base=[0.3] * n)), None)

    four = verdict(4)
    measure = four["against"]["base"]["measures"]["edit_distance"]
    assert measure["low"] > 0 and measure["p_value"] == 0.125
    assert four["passed"] and not measure["worse"]
    eight = verdict(8)
    assert not eight["passed"] and eight["against"]["base"]["measures"]["edit_distance"]["p_value"] < 0.01


def test_the_gate_judges_an_edit_of_the_bases_code_by_the_region_the_user_changed() -> None:
    """Users edited two characters of the base's code; the candidate writes the convention but words the rest its own
    way: far from the kept text as a whole (the base is nearest: it wrote it), closest over the changed regions."""
    metrics = evaluated([0.2] * 20, base=[0.01] * 20)
    whole_only = gate.check(gate.Evaluated("v2", metrics), None)
    assert not whole_only["passed"] and "edit replay distance is higher than base's" in whole_only["reasons"][0]
    for row in metrics["eval"]["per_example"]:
        row["region_distance"], row["base_region_distance"] = 0.0, 0.5
    verdict = gate.check(gate.Evaluated("v2", metrics), None)
    assert verdict["passed"], verdict["reasons"]
    assert verdict["against"]["base"]["measures"]["edit_distance"]["difference"] == pytest.approx(-0.5)


def test_the_gate_compares_the_same_examples_when_production_was_evaluated_on_another_split() -> None:
    """Production v1 was evaluated on an older snapshot's eval split (keys a*); the candidate on a newer one (keys
    b*), with v1 generating on those same examples: the gate pairs on the candidate's examples, n = all of them."""
    production = gate.Evaluated("v1", evaluated([0.2] * 12, prefix="a"), snapshot_id=1)
    prod_on_b = [0.3 + 0.01 * (i % 4) for i in range(30)]
    better = gate.Evaluated(
        "v2", evaluated([d - 0.1 for d in prod_on_b], prefix="b", production=("v1", prod_on_b)), snapshot_id=2
    )
    verdict = gate.check(better, production)
    comparison = verdict["against"]["production"]["measures"]["edit_distance"]
    assert verdict["passed"] and verdict["examples"]["n"] == 30 and verdict["examples"]["snapshot_id"] == 2
    assert comparison["n"] == 30 and comparison["paired"] and comparison["difference"] == pytest.approx(-0.1)
    assert verdict["against"]["production"]["source"] == "v2's evaluation"
    # Unpaired, the old gate saw 0.2 against 0.2-0.33 and called v2 worse; paired on the same prompts it is better.
    worse = gate.Evaluated("v3", evaluated([d + 0.1 for d in prod_on_b], prefix="b", production=("v1", prod_on_b)))
    assert "edit replay distance is higher than v1's" in gate.check(worse, production)["reasons"][0]

    # Evaluated against an older production, on examples the new production never saw: refused, with the way out.
    stale = gate.Evaluated("v4", evaluated([0.1] * 30, prefix="b", production=("v0", prod_on_b)))
    verdict = gate.check(stale, production)
    assert not verdict["passed"] and "production" not in verdict["against"]
    assert "editloop adapters evaluate v4" in verdict["reasons"][0]


def test_history_records_the_paired_verdict(db_url: str, tmp_path: Path) -> None:
    pid = project(db_url)
    good = publish(db_url, tmp_path, pid, evaluated([0.2] * 20, [1.0] * 20, base=[0.3] * 20))
    collapsed = publish(db_url, tmp_path, pid, evaluated([0.9] * 20, [0.0] * 20, base=[0.3] * 20))
    with session_scope(db_url) as session, pytest.raises(Conflict, match="than base's beyond noise"):
        registry.promote(session, pid, collapsed, actor="x")  # no production yet: the base still judges it
    with session_scope(db_url) as session:
        event = registry.promote(session, pid, good, actor="x")
        base = event.gate["against"]["base"]["measures"]
        assert event.gate["passed"] and event.gate["examples"]["n"] == 20 and event.gate["examples"]["split"] == "eval"
        assert base["edit_distance"]["difference"] == pytest.approx(-0.1) and base["edit_distance"]["low"] < 0
        assert "vs base (n=20): edit_distance -0.100" in gate.summary(event.gate)
