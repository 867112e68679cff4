"""Deletion requests end to end without training: the walk removes a user's events, generations, training rows,
snapshot rows and exported files, redacts the snapshot (its original hash kept), flags and redacts the versions
trained on it, leaves every other user's data as it was; it resumes after a crash, repeats harmlessly, and each
selector takes what it names. Retention goes through the same path; the retrain policy queues a run."""

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import Base, session_scope, utcnow
from core.projects import Project, create_project
from core.settings import Settings
from feedback import deletion
from feedback.models import DatasetSnapshot, FeedbackEvent, Generation, TrainingRow
from feedback.rights_models import DeletionItem, DeletionRequest
from feedback.rows import build_rows
from feedback.service import ingest
from feedback.snapshots import cut_snapshot, export_snapshot
from tests.rights_data import publish_version, shared_prompt_events, user_events
from trainers import registry, rights
from trainers.models import AdapterVersion, TrainingRun, VersionFlag


def new_project(url: str, **settings: Any) -> int:
    with session_scope(url) as session:
        project = create_project(session, f"r-{uuid.uuid4().hex[:10]}")
        project.settings = settings
        return project.id


def post(url: str, project_id: int, events: list[dict[str, Any]]) -> None:
    with session_scope(url) as session:
        for start in range(0, len(events), 500):
            result = ingest(session, project_id, events[start : start + 500], Settings())
            assert not result.errors, result.errors


def publish(url: str, root: Path, project_id: int, snapshot_id: int | None, parent_id: int | None, samples: Any) -> int:
    return publish_version(
        url, root, project_id, {"eval": {"examples": 1, "samples": samples}}, snapshot_id, parent_id
    )[0]


def dump(url: str) -> str:
    """Every row of every table, as text: what a deletion must leave without the marker."""
    out = []
    with session_scope(url) as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                out.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(out)


def scan(root: Path, marker: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]


def others(url: str, project_id: int, user: str) -> dict[str, Any]:
    with session_scope(url) as session:
        gens = session.scalars(
            select(Generation.generation_id).where(Generation.project_id == project_id, Generation.user == user)
        ).all()
        events = session.scalar(
            select(func.count()).where(FeedbackEvent.project_id == project_id, FeedbackEvent.generation_id.in_(gens))
        )
        rows = session.scalars(
            select(TrainingRow.content_hash).where(TrainingRow.project_id == project_id, TrainingRow.user == user)
        ).all()
    return {"generations": sorted(gens), "events": events, "rows": sorted(rows)}


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> dict[str, Any]:
    """alice (marked) and bob, a choice pair across them, rows, a snapshot, an export, two versions on it."""
    marker = f"MARK{uuid.uuid4().hex[:12]}"
    project_id = new_project(db_url, dataset={"eval_fraction": 0.3})
    name = f"alice-{uuid.uuid4().hex[:8]}"  # unique: the session's database holds other tests' users
    alice = user_events(name, marker, 9)
    bob = user_events("bob", "plain", 9)
    shared = shared_prompt_events(name, "accepted", f"    return sorted(items)  # {marker}\n")
    shared += shared_prompt_events("bob", "rejected", "    pass\n")
    post(db_url, project_id, alice + bob + shared)
    with session_scope(db_url) as session:
        build_rows(session, project_id)
    with session_scope(db_url) as session:
        snapshot = cut_snapshot(session, project_id)
        snapshot_id, sha = snapshot.id, snapshot.sha256
        assert snapshot.counts["choice_pair"]["train"] + snapshot.counts["choice_pair"]["eval"] >= 1
    export = tmp_path / "export"
    with session_scope(db_url) as session:
        export_snapshot(session, project_id, snapshot_id, export, "jsonl")
        deletion.record_export(session, project_id, snapshot_id, export, "jsonl", "test")
    root = tmp_path / "artifacts"
    v1 = publish(db_url, root, project_id, snapshot_id, None, [{"prompt": f"# {marker}", "final": marker}])
    v2 = publish(db_url, root, project_id, None, v1, [])
    assert scan(export, marker) and scan(root, marker) and marker in dump(db_url)
    return {
        "url": db_url,
        "marker": marker,
        "alice": name,
        "project_id": project_id,
        "snapshot_id": snapshot_id,
        "sha": sha,
        "export": export,
        "root": root,
        "versions": (v1, v2),
        "alice_events": len(alice) + 2,
        "bob": others(db_url, project_id, "bob"),
    }


def delete(url: str, project_id: int, selector: dict[str, Any], max_steps: int | None = None) -> tuple[int, str]:
    with session_scope(url) as session:
        request = rights.request_deletion(session, project_id, selector, trigger="api", actor="key:1", address="x")
        request_id = request.id
    return request_id, rights.process(url, request_id, max_steps=max_steps)


def test_deleting_a_user_leaves_no_trace_and_flags_the_versions(world: dict[str, Any]) -> None:
    url, marker, project_id = world["url"], world["marker"], world["project_id"]
    request_id, state = delete(url, project_id, {"user": world["alice"]})
    assert state == "done"
    text = dump(url)
    assert marker not in text
    assert world["alice"] not in text  # the selector keeps a digest only
    assert not scan(world["export"], marker) and not scan(world["root"], marker)
    assert others(url, project_id, "bob") == world["bob"]  # bob's generations, events and rows as they were

    with session_scope(url) as session:
        request = session.get(DeletionRequest, request_id)
        assert request.state == "done" and request.phase == "done"
        assert request.counts["events"] == world["alice_events"] and request.counts["generations"] == 10
        assert request.counts["training_rows"] > 0 and request.counts["snapshot_rows"] > 0
        assert request.counts["export_folders_rewritten"] == 1 and request.counts["versions_flagged"] == 2
        assert request.selector["user"].startswith("sha256:")
        assert not session.scalars(select(DeletionItem)).all()
        snapshot = session.get(DatasetSnapshot, world["snapshot_id"])
        assert snapshot.original_sha256 == world["sha"] and snapshot.sha256 != world["sha"]
        assert [r["deletion_id"] for r in snapshot.redactions] == [request_id]
        assert snapshot.redactions[0]["rows_removed"] == request.snapshots[str(snapshot.id)]
        assert snapshot.row_count == sum(sum(c.values()) for c in snapshot.counts.values()) > 0
        flags = session.scalars(select(VersionFlag).order_by(VersionFlag.version_id)).all()
        mine = [f for f in flags if f.deletion_id == request_id]
        assert [f.version_id for f in mine] == list(world["versions"])
        assert "continued from v1" in mine[1].reason
        v1 = session.get(AdapterVersion, world["versions"][0])
        assert mine[0].manifest_sha256_before is not None and mine[0].manifest_sha256_before != v1.manifest_sha256
        registry.verified_path(v1)  # the redacted manifest is what the registry now expects
        assert [(n, r) for n, r in rights.flagged_versions(session, request_id)][0][0] == "v1"
    # The export was written again from what the snapshot holds now.
    manifest = json.loads((world["export"] / "manifest.json").read_text())
    assert manifest["sha256"] != world["sha"] and manifest["row_count"] > 0


def test_a_walk_killed_half_way_resumes_and_completes(world: dict[str, Any]) -> None:
    url, project_id = world["url"], world["project_id"]
    request_id, state = delete(url, project_id, {"user": world["alice"]}, max_steps=2)
    assert state == "paused"
    with session_scope(url) as session:
        assert session.get(DeletionRequest, request_id).state == "running"
    assert request_id not in rights.tick(url)["resumed"]  # not stalled yet
    assert rights.process(url, request_id) == "done"
    assert rights.process(url, request_id) == "done"  # a duplicate message: nothing to do
    assert world["marker"] not in dump(url)
    assert others(url, project_id, "bob") == world["bob"]
    # The same request again finds nothing and changes nothing.
    again, state = delete(url, project_id, {"user": world["alice"]})
    with session_scope(url) as session:
        counts = session.get(DeletionRequest, again).counts
    assert state == "done" and not counts.get("events") and not counts.get("snapshot_rows")


def test_each_selector_takes_what_it_names(db_url: str) -> None:
    project_id = new_project(db_url)
    a = user_events("ann", "a", 3, session="s-1")
    b = user_events("ben", "b", 3, session="s-2")
    c = user_events("cal", "c", 3, session="s-3")
    recent = user_events("dee", "d", 2)
    now = utcnow()
    for event in recent:
        event["occurred_at"] = now.isoformat()
    post(db_url, project_id, a + b + c + recent)

    def gens() -> set[str]:
        with session_scope(db_url) as session:
            found = select(Generation.user).where(Generation.project_id == project_id)
            return {u for u in session.scalars(found)}

    assert delete(db_url, project_id, {"session": "s-1"})[1] == "done"
    assert gens() == {"ben", "cal", "dee"}
    ben = [e["generation_id"] for e in b if e["type"] == "generation"]
    assert delete(db_url, project_id, {"generation_ids": ben})[1] == "done"
    assert gens() == {"cal", "dee"}
    assert delete(db_url, project_id, {"file_path": "src/cal/*.py"})[1] == "done"
    assert gens() == {"dee"}
    assert delete(db_url, project_id, {"before": (now - timedelta(days=1)).isoformat()})[1] == "done"
    assert gens() == {"dee"}
    with session_scope(db_url) as session:
        left = session.scalar(select(func.count()).where(FeedbackEvent.project_id == project_id))
    assert left == len(recent)


@pytest.mark.parametrize("selector", [{}, {"user": ""}, {"user": "a", "session": "b"}, {"before": "yesterday"}])
def test_a_bad_selector_is_refused(db_url: str, selector: dict[str, Any]) -> None:
    from core.errors import InvalidInput

    project_id = new_project(db_url)
    with pytest.raises(InvalidInput), session_scope(db_url) as session:
        deletion.create_request(session, project_id, selector, trigger="api", actor="t")


def test_retention_deletes_what_is_older_through_the_same_path(db_url: str) -> None:
    project_id = new_project(db_url, dataset={"retention_days": 30})
    old = user_events("old", "o", 3)  # November 2026: older than 30 days
    fresh = user_events("new", "n", 2)
    for event in fresh:
        event["occurred_at"] = utcnow().isoformat()
    post(db_url, project_id, old + fresh)
    started = rights.tick(db_url)["started"]
    with session_scope(db_url) as session:
        mine = [i for i in started if session.get(DeletionRequest, i).project_id == project_id]
    assert len(mine) == 1
    assert rights.tick(db_url)["started"].count(mine[0]) == 0  # one retention request at a time
    assert rights.process(db_url, mine[0]) == "done"
    with session_scope(db_url) as session:
        users = set(session.scalars(select(Generation.user).where(Generation.project_id == project_id)))
        request = session.get(DeletionRequest, mine[0])
    assert users == {"new"} and request.trigger == "retention" and request.counts["generations"] == 3


def test_the_retrain_policy_queues_a_run_on_the_redacted_snapshot(db_url: str, tmp_path: Path) -> None:
    project_id = new_project(db_url, model={"base_model": "tiny", "on_deleted_data": "retrain"})
    post(db_url, project_id, user_events("eve", "e", 6) + user_events("fay", "f", 6))
    with session_scope(db_url) as session:
        build_rows(session, project_id)
    with session_scope(db_url) as session:
        snapshot_id = cut_snapshot(session, project_id).id
    publish(db_url, tmp_path, project_id, snapshot_id, None, [])
    request_id, state = delete(db_url, project_id, {"user": "eve"})
    assert state == "done"
    with session_scope(db_url) as session:
        request = session.get(DeletionRequest, request_id)
        run = session.get(TrainingRun, request.retrain_run_id)
        assert run.kind == "pipeline" and run.snapshot_id == snapshot_id and run.trigger == "deletion"
        assert run.status == "queued"


def test_deletion_under_concurrent_ingest_loses_no_concurrent_event(pg_url: str) -> None:
    project_id = new_project(pg_url)
    post(pg_url, project_id, user_events("gone", "g", 400))
    sent: list[str] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def ingest_others() -> None:
        i = 0
        try:
            while not stop.is_set() or i < 10:
                batch = user_events(f"keep{i % 5}", "k", 5, start=i)
                post(pg_url, project_id, batch)
                sent.extend(e["event_id"] for e in batch)
                i += 1
        except BaseException as exc:  # noqa: BLE001  (reported below)
            failures.append(exc)

    thread = threading.Thread(target=ingest_others)
    thread.start()
    try:
        with session_scope(pg_url) as session:
            request_id = deletion.create_request(session, project_id, {"user": "gone"}, trigger="api", actor="t").id
        deletion.GENERATION_BATCH, saved = 50, deletion.GENERATION_BATCH
        try:
            assert rights.process(pg_url, request_id) == "done"
        finally:
            deletion.GENERATION_BATCH = saved
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures
    with session_scope(pg_url) as session:
        stored = set(session.scalars(select(FeedbackEvent.event_id).where(FeedbackEvent.project_id == project_id)))
        gone = session.scalar(
            select(func.count()).where(Generation.project_id == project_id, Generation.user == "gone")
        )
        request = session.get(DeletionRequest, request_id)
    assert set(sent) <= stored and len(sent) >= 50
    assert gone == 0 and request.counts["events"] == 800 and request.steps > 8


def test_a_project_row_lookup_keeps_working(db_url: str) -> None:
    # Project settings validate the new fields.
    project_id = new_project(db_url, dataset={"retention_days": 7}, model={"on_deleted_data": "flag"})
    with session_scope(db_url) as session:
        project = session.get(Project, project_id)
        from feedback.snapshots import dataset_config
        from trainers.config import model_settings

        assert dataset_config(project).retention_days == 7
        assert model_settings(project.settings).on_deleted_data == "flag"


def test_a_worker_killed_mid_walk_leaves_a_request_the_next_one_completes(pg_url: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    project_id = new_project(pg_url)
    post(pg_url, project_id, user_events("kill", "k", 200) + user_events("stay", "s", 10))
    with session_scope(pg_url) as session:
        request_id = deletion.create_request(session, project_id, {"user": "kill"}, trigger="api", actor="t").id
    code = (
        "from feedback import deletion; deletion.GENERATION_BATCH = 10\n"
        f"from trainers import rights; rights.process({pg_url!r}, {request_id}, pause_s=0.2)"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        while True:
            with session_scope(pg_url) as session:
                steps = session.get(DeletionRequest, request_id).steps
            if steps >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.wait(timeout=30)
    with session_scope(pg_url) as session:
        request = session.get(DeletionRequest, request_id)
        assert request.state == "running" and request.phase == "generations" and 0 < request.counts["events"] < 400
    assert rights.process(pg_url, request_id) == "done"
    with session_scope(pg_url) as session:
        request = session.get(DeletionRequest, request_id)
        users = set(session.scalars(select(Generation.user).where(Generation.project_id == project_id)))
    assert request.counts["events"] == 400 and request.counts["generations"] == 200 and users == {"stay"}
