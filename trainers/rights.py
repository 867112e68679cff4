"""Deletion requests on the trainers' side: the walk of feedback/deletion.py, then the adapter versions that learned
from what it removed.

A version learned from deleted data if it was trained on a snapshot that lost rows, or continued from a version
that did (`parent_id`: `start_from=production`). Its weights cannot unlearn, so it is flagged (adapter_version_flags,
with the request), and the example texts its evaluation kept (`metrics.eval.samples`: prompts and final code of
held-out rows) are taken out of its row, its run and its manifest file; the manifest's new hash is recorded, the old
one kept on the flag. The project's `model.on_deleted_data` says what follows: `flag`, or `retrain`, which queues a
pipeline run on the redacted snapshot through the usual promotion gate."""

import json
import logging
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import artifacts
from core.audit import record
from core.db import session_scope, utcnow
from core.errors import EditloopError
from core.projects import Project
from core.queue import send_after_commit
from core.settings import Settings, get_settings
from feedback import deletion
from feedback.models import DatasetSnapshot
from feedback.rights_models import DeletionRequest
from feedback.snapshots import dataset_config
from trainers import runs
from trainers.config import model_settings
from trainers.models import AdapterVersion, TrainingRun, VersionFlag

log = logging.getLogger(__name__)
TASK = "rights.process_deletion"
STALLED_AFTER = timedelta(minutes=5)


def process(
    url: str, request_id: int, max_steps: int | None = None, retries: int = 3, pause_s: float | None = None
) -> str:
    """Walk a request to the end, one short transaction per step; returns its state ("paused" after `max_steps`,
    which tests use to stop a walk half way). A step that fails is retried; one that keeps failing fails the
    request with its error."""
    pause_s = get_settings().deletion_step_pause_ms / 1000 if pause_s is None else pause_s
    done = 0
    failures = 0
    while max_steps is None or done < max_steps:
        if done and pause_s:
            time.sleep(pause_s)
        try:
            with session_scope(url) as session:
                request = deletion.lock(session, request_id)
                if request is None:
                    found = session.get(DeletionRequest, request_id)
                    return found.state if found is not None else "missing"
                if request.phase == "versions":
                    flag_versions(session, request)
                    deletion.finish(session, request)
                else:
                    deletion.step(session, request)
        except Exception as exc:
            failures += 1
            log.warning("deletion %s: step failed (%s of %s): %s", request_id, failures, retries, exc)
            if failures >= retries:
                with session_scope(url) as session:
                    found = session.get(DeletionRequest, request_id)
                    if found is not None:
                        detail = exc.detail if isinstance(exc, EditloopError) else f"{type(exc).__name__}: {exc}"
                        deletion.fail(session, found, detail)
                return "failed"
            time.sleep(0.2 * failures)
            continue
        failures = 0
        done += 1
    return "paused"


def flag_versions(session: Session, request: DeletionRequest) -> list[VersionFlag]:
    snapshot_ids = {int(s) for s in (request.snapshots or {})}
    if not snapshot_ids:
        return []
    versions = session.scalars(
        select(AdapterVersion).where(AdapterVersion.project_id == request.project_id).order_by(AdapterVersion.id)
    ).all()
    flagged: dict[int, AdapterVersion] = {}
    flags = []
    for version in versions:  # parents come before their children: ids grow
        if version.snapshot_id in snapshot_ids:
            reason = f"trained on snapshot {version.snapshot_id}, which held data that deletion {request.id} removed"
        elif version.parent_id in flagged:
            reason = f"continued from {flagged[version.parent_id].name}, which learned from deleted data"
        else:
            continue
        flagged[version.id] = version
        flags.append(_flag(session, request, version, reason))
    _count(request, versions_flagged=len(flags))
    policy = [v for v in flagged.values() if v.kind == "policy"]
    if policy and model_settings(_project(session, request).settings).on_deleted_data == "retrain":
        # The newest redacted snapshot a policy version was trained on (one continued from a flagged version may
        # have been trained on an unaffected one: then the newest redacted snapshot).
        trained_on = [v.snapshot_id for v in policy if v.snapshot_id in snapshot_ids]
        _retrain(session, request, max(trained_on or snapshot_ids))
    return flags


def _project(session: Session, request: DeletionRequest) -> Project:
    project = session.get(Project, request.project_id)
    assert project is not None
    return project


def _count(request: DeletionRequest, **added: int) -> None:
    counts = dict(request.counts or {})
    for kind, n in added.items():
        counts[kind] = counts.get(kind, 0) + n
    request.counts = counts


def _flag(session: Session, request: DeletionRequest, version: AdapterVersion, reason: str) -> VersionFlag:
    existing = session.scalar(
        select(VersionFlag).where(VersionFlag.version_id == version.id, VersionFlag.deletion_id == request.id)
    )
    before = _redact_version(session, version, request.id)
    if existing is not None:
        return existing
    flag = VersionFlag(
        project_id=version.project_id,
        version_id=version.id,
        deletion_id=request.id,
        reason=reason,
        manifest_sha256_before=before,
        created_at=utcnow(),
    )
    session.add(flag)
    session.flush()
    return flag


def strip_samples(value: Any) -> tuple[Any, bool]:
    """`value` without any `samples` entry (example texts), and whether it had one."""
    if isinstance(value, dict):
        changed = "samples" in value
        out = {}
        for key, item in value.items():
            if key == "samples":
                continue
            out[key], sub = strip_samples(item)
            changed = changed or sub
        return out, changed
    if isinstance(value, list):
        items = [strip_samples(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def _redact_version(session: Session, version: AdapterVersion, deletion_id: int) -> str | None:
    """Take example texts out of the version's row, its run and its manifest file. The file goes first: a crash
    before the commit leaves a redacted file that the repeated step finds and records. Returns the manifest hash
    from before, if anything was taken."""
    before = version.manifest_sha256
    path = Path(version.uri) / artifacts.MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        stripped, changed = strip_samples(manifest)
        if changed:
            stripped["redactions"] = [*manifest.get("redactions", []), {"deletion_id": deletion_id}]
            _atomic_write(path, json.dumps(stripped, indent=2, sort_keys=True).encode())
        current = artifacts.manifest_sha256(Path(version.uri))
    else:
        current = before
    metrics, in_metrics = strip_samples(version.metrics)
    manifest_row, in_manifest = strip_samples(version.manifest)
    if in_metrics or in_manifest or current != before:
        version.metrics, version.manifest, version.manifest_sha256 = metrics, manifest_row, current
    if version.run_id is not None:
        run = session.get(TrainingRun, version.run_id)
        if run is not None:
            run_metrics, in_run = strip_samples(run.metrics)
            if in_run:
                run.metrics = run_metrics
    return before if current != before or in_metrics or in_manifest else None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _retrain(session: Session, request: DeletionRequest, snapshot_id: int) -> None:
    if session.get(DatasetSnapshot, snapshot_id) is None or request.retrain_run_id is not None:
        return
    try:
        with session.begin_nested():
            run = runs.create_run(
                session,
                request.project_id,
                "pipeline",
                snapshot_id=snapshot_id,
                actor=f"deletion {request.id}",
                trigger="deletion",
            )
    except EditloopError as exc:  # an active run, no base model: the flag stands, the request still completes
        _count(request, retrain_skipped=1)
        request.error = f"retrain not queued: {exc.detail}"
        return
    request.retrain_run_id = run.id


def flags_of(session: Session, project_id: int) -> dict[int, list[VersionFlag]]:
    """version id -> its flags, oldest first."""
    out: dict[int, list[VersionFlag]] = {}
    query = select(VersionFlag).where(VersionFlag.project_id == project_id).order_by(VersionFlag.id)
    for flag in session.scalars(query):
        out.setdefault(flag.version_id, []).append(flag)
    return out


def flagged_versions(session: Session, request_id: int) -> list[tuple[str, str]]:
    """(version name, reason) of the versions a request flagged."""
    query = (
        select(AdapterVersion.name, VersionFlag.reason)
        .join(VersionFlag, VersionFlag.version_id == AdapterVersion.id)
        .where(VersionFlag.deletion_id == request_id)
        .order_by(AdapterVersion.id)
    )
    return [(name, reason) for name, reason in session.execute(query)]


def request_deletion(
    session: Session, project_id: int, selector: Any, *, trigger: str, actor: str, address: str
) -> DeletionRequest:
    """Create a request, audit it, and send it to a worker after the commit."""
    request = deletion.create_request(session, project_id, selector, trigger=trigger, actor=actor)
    record(
        session,
        project_id,
        "deletion.create",
        actor=actor,
        address=address,
        target=f"deletion:{request.id}",
        selector=deletion.digest_selector(request.selector),
        trigger=trigger,
    )
    send_after_commit(session, TASK, request.id)
    return request


def tick(url: str, settings: Settings | None = None) -> dict[str, list[int]]:
    """The schedule's part: a retention request per project whose `dataset.retention_days` is set (one at a time),
    and a new message for requests whose worker stopped. Returns the ids of both."""
    settings = settings or get_settings()
    started: list[int] = []
    with session_scope(url) as session:
        for project in session.scalars(select(Project).order_by(Project.id)):
            try:
                days = dataset_config(project).retention_days
            except EditloopError:
                continue
            if days is None or deletion.active_request(session, project.id, "retention") is not None:
                continue
            before = (utcnow() - timedelta(days=days)).isoformat()
            request = request_deletion(
                session, project.id, {"before": before}, trigger="retention", actor="schedule", address="local"
            )
            started.append(request.id)
        stalled = deletion.stalled(session, utcnow() - STALLED_AFTER)
        for request_id in stalled:
            if request_id not in started:
                send_after_commit(session, TASK, request_id)
    return {"started": started, "resumed": [i for i in stalled if i not in started]}
