"""The adapter registry: immutable versions, the `production` / `canary` aliases, and their history.

A version is published in two steps that only ever leave a complete state behind: the adapter directory is
written under a temporary name and renamed into place with its manifest (core.artifacts), then its row is inserted
in the same short transaction that allocated its number. A crash between the two leaves an unregistered directory,
which is never served and is set aside when the number is next allocated. Versions are never edited; promotion
moves an alias and records who, when and why."""

import functools
import os
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import artifacts
from core.db import utcnow
from core.errors import Conflict, InvalidInput, NotFound
from core.projects import Project
from ml.environment import library_versions
from trainers import gate
from trainers.config import model_settings, upstream_settings
from trainers.models import AdapterAlias, AdapterEvaluation, AdapterVersion, AliasEvent

ALIASES = ("production", "canary")
UPSTREAM = "upstream"  # the project's rented model: a reserved version row, so aliases and metrics treat it as one


class PromotionRefused(Conflict):
    """The gate refused a promotion; `verdict` is what it found (the same record a promotion stores)."""

    def __init__(self, detail: str, verdict: dict[str, Any]) -> None:
        super().__init__(detail)
        self.verdict = verdict


@functools.cache
def code_revision() -> str:
    """The git commit of the code that trained a version (or the package version outside a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        import importlib.metadata

        try:
            return "editloop " + importlib.metadata.version("editloop")
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


def project_dir(root: Path, project_id: int) -> Path:
    return root / f"project-{project_id}"


def register(
    session: Session,
    root: Path,
    project_id: int,
    staging: Path,
    *,
    kind: str,
    method: str,
    run_id: int | None,
    snapshot: Any,
    parent: AdapterVersion | None,
    base_model: str,
    base_revision: str | None,
    config: dict[str, Any],
    metrics: dict[str, Any],
    now: datetime | None = None,
) -> AdapterVersion:
    """Publish `staging` (a complete PEFT directory) as the project's next version and insert its row. The caller
    commits; the project row is locked until then, so numbers are allocated one at a time."""
    now = now or utcnow()
    _lock_project(session, project_id)
    number = (
        int(session.scalar(select(func.max(AdapterVersion.number)).where(AdapterVersion.project_id == project_id)) or 0)
        + 1
    )
    name = f"v{number}"
    destination = project_dir(root, project_id) / name
    if destination.exists():  # a crash after publishing, before the row committed: never registered
        os.rename(destination, destination.with_name(f"{artifacts.TMP_PREFIX}orphan-{name}-{now.timestamp():.0f}"))
    manifest = {
        "format": "editloop-adapter-v1",
        "name": name,
        "kind": kind,
        "method": method,
        "project_id": project_id,
        "run_id": run_id,
        "created_at": now.isoformat(),
        "lineage": {
            "snapshot_id": snapshot.id if snapshot is not None else None,
            "snapshot_sha256": snapshot.sha256 if snapshot is not None else None,
            "parent_version": parent.name if parent is not None else None,
            "parent_manifest_sha256": parent.manifest_sha256 if parent is not None else None,
            "base_model": base_model,
            "base_revision": base_revision,
            "code_revision": code_revision(),
            "libraries": library_versions(),
        },
        "config": config,
        "metrics": metrics,
    }
    manifest = artifacts.publish(staging, destination, manifest)
    version = AdapterVersion(
        project_id=project_id,
        number=number,
        name=name,
        kind=kind,
        method=method,
        run_id=run_id,
        snapshot_id=snapshot.id if snapshot is not None else None,
        parent_id=parent.id if parent is not None else None,
        base_model=base_model,
        uri=str(destination),
        manifest_sha256=artifacts.manifest_sha256(destination),
        manifest=manifest,
        metrics=metrics,
        created_at=now,
    )
    session.add(version)
    session.flush()
    return version


def upstream_version(session: Session, project_id: int) -> AdapterVersion:
    """The reserved row that stands for the project's upstream (number 0, kind `upstream`, no artifact), so an alias
    may point at it like at a version. Made on first use, under the project lock the caller holds; NotFound while
    the project names no upstream."""
    found = session.scalar(
        select(AdapterVersion).where(AdapterVersion.project_id == project_id, AdapterVersion.name == UPSTREAM)
    )
    if found is not None:
        return found
    project = session.get(Project, project_id)
    upstream = upstream_settings(project.settings if project is not None else None)
    if not upstream.configured:
        raise NotFound("upstream: the project names no upstream (settings upstream.url and upstream.model)")
    row = AdapterVersion(
        project_id=project_id,
        number=0,
        name=UPSTREAM,
        kind=UPSTREAM,
        method=UPSTREAM,
        run_id=None,
        snapshot_id=None,
        parent_id=None,
        base_model=upstream.model or "",
        uri=UPSTREAM,
        manifest_sha256="",
        manifest={"format": "editloop-upstream-v1", "note": "the project's settings.upstream serve it"},
        metrics={},
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def _lock_project(session: Session, project_id: int) -> None:
    """Serialize registry writes per project (SQLite serializes all writers already)."""
    session.execute(select(Project.id).where(Project.id == project_id).with_for_update())


def list_versions(session: Session, project_id: int, kind: str | None = None) -> list[AdapterVersion]:
    query = select(AdapterVersion).where(AdapterVersion.project_id == project_id)
    if kind is not None:
        query = query.where(AdapterVersion.kind == kind)
    return list(session.scalars(query.order_by(AdapterVersion.number.desc())))


def aliases(session: Session, project_id: int) -> dict[str, int]:
    rows = session.execute(
        select(AdapterAlias.alias, AdapterAlias.version_id).where(AdapterAlias.project_id == project_id)
    )
    return {alias: version_id for alias, version_id in rows}


def get_version(session: Session, project_id: int, ref: str) -> AdapterVersion:
    """A version by name (`v3`) or alias (`production`, `canary`)."""
    if ref in ALIASES:
        version_id = aliases(session, project_id).get(ref)
        if version_id is None:
            raise NotFound(f"alias {ref!r} points at no version yet")
        version = session.get(AdapterVersion, version_id)
    else:
        version = session.scalar(
            select(AdapterVersion).where(AdapterVersion.project_id == project_id, AdapterVersion.name == ref)
        )
    if version is None or version.project_id != project_id:
        raise NotFound(f"adapter version {ref!r} does not exist")
    return version


def alias_version(session: Session, project_id: int, alias: str) -> AdapterVersion | None:
    try:
        return get_version(session, project_id, alias)
    except NotFound:
        return None


def latest(session: Session, project_id: int, kind: str) -> AdapterVersion | None:
    return session.scalar(
        select(AdapterVersion)
        .where(AdapterVersion.project_id == project_id, AdapterVersion.kind == kind)
        .order_by(AdapterVersion.number.desc())
        .limit(1)
    )


def verified_path(version: AdapterVersion) -> Path:
    """The version's directory after checking the manifest's hash and every file's; raises ChecksumMismatch."""
    if version.kind == UPSTREAM:
        raise InvalidInput("upstream: the rented model has no adapter directory")
    path = Path(version.uri)
    artifacts.verify(path, version.manifest_sha256)
    return path


def promote(
    session: Session,
    project_id: int,
    ref: str,
    *,
    alias: str = "production",
    actor: str,
    reason: str | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> AliasEvent:
    """Move `alias` to the version `ref`, if the gate passes: not worse than the base nor the current production
    on the same held-out examples (trainers.gate), or `force` with a reason. The verdict, with its examples, n and
    paired differences, is recorded on the alias event. Concurrent promotions are serialized on the project row; the
    alias table holds one row per alias."""
    if alias not in ALIASES:
        raise InvalidInput(f"alias: {alias!r} is not one of {list(ALIASES)}")
    if force and not (reason or "").strip():
        raise InvalidInput("reason: a forced promotion needs a reason")
    _lock_project(session, project_id)
    version = upstream_version(session, project_id) if ref == UPSTREAM else get_version(session, project_id, ref)
    if version.kind not in ("policy", UPSTREAM):
        raise InvalidInput(f"version: {version.name} is a {version.kind} model; only policy adapters are served")
    current = alias_version(session, project_id, alias)
    if current is not None and current.id == version.id:
        raise Conflict(f"{alias} already points at {version.name}")
    verdict: dict[str, Any]
    if version.kind == UPSTREAM:  # what the team rents today: no offline evaluation of ours to gate it on
        verdict = {"passed": True, "reasons": ["the upstream is the rented baseline; it is not gated"]}
    else:
        verdict = gate_verdict(session, project_id, version, alias_version(session, project_id, "production"))
    if not verdict["passed"] and not force:
        raise PromotionRefused(
            f"promotion of {version.name} to {alias} refused: {'; '.join(verdict['reasons'])}", verdict
        )
    return _move(session, project_id, alias, version, current, "promote", actor, reason, force, verdict, now)


def gate_verdict(
    session: Session, project_id: int, version: AdapterVersion, production: AdapterVersion | None
) -> dict[str, Any]:
    """What the promotion gate answers for this version against this production and the base, with the project's
    tolerances."""
    if production is not None and production.id == version.id:
        return {"passed": True, "reasons": ["the candidate is production"]}
    if production is not None and production.kind == UPSTREAM:
        # the rented model has no evaluation of ours: the candidate is gated against the base; how it compares with
        # the upstream is its eval's edit_replay_vs_upstream offline, and the canary policy live
        production = None
    project = session.get(Project, project_id)
    tolerances = model_settings(project.settings if project is not None else None).gate.model_dump()
    return gate.check(
        evaluated(session, version, production),
        evaluated(session, production) if production is not None else None,
        tolerances,
    )


def evaluated(session: Session, version: AdapterVersion, production: AdapterVersion | None = None) -> gate.Evaluated:
    """A version as the gate sees it: its evaluation (the one made at training time, or, when that was made against
    another production than `production`, a later one against it: trainers.reevaluate), and the snapshot and token
    limit it was made with."""
    config = (version.manifest or {}).get("config") or {}
    metrics = version.metrics
    against = production.name if production is not None and production.id != version.id else None
    if (metrics.get("eval") or {}).get("production_version") != against:
        later = latest_evaluation(session, version, production if against else None)
        if later is not None:
            metrics = later.metrics
    return gate.Evaluated(version.name, metrics, version.snapshot_id, config.get("eval_max_new_tokens"))


def latest_evaluation(
    session: Session, version: AdapterVersion, production: AdapterVersion | None
) -> AdapterEvaluation | None:
    """The newest later evaluation of `version` against `production` (None: against no production)."""
    against = (
        AdapterEvaluation.production_version_id.is_(None)
        if production is None
        else AdapterEvaluation.production_version_id == production.id
    )
    return session.scalar(
        select(AdapterEvaluation)
        .where(AdapterEvaluation.version_id == version.id, against)
        .order_by(AdapterEvaluation.id.desc())
        .limit(1)
    )


def rollback(
    session: Session,
    project_id: int,
    *,
    alias: str = "production",
    actor: str,
    reason: str | None = None,
    to: str | None = None,
    now: datetime | None = None,
) -> AliasEvent:
    """Point `alias` back at the version it held before its latest move (or at `to`). Never gated: rolling back is
    how a bad version is undone."""
    if alias not in ALIASES:
        raise InvalidInput(f"alias: {alias!r} is not one of {list(ALIASES)}")
    _lock_project(session, project_id)
    current = alias_version(session, project_id, alias)
    if current is None:
        raise NotFound(f"alias {alias!r} points at no version; nothing to roll back")
    if to is not None:
        target = get_version(session, project_id, to)
    else:
        last = session.scalar(
            select(AliasEvent)
            .where(AliasEvent.project_id == project_id, AliasEvent.alias == alias, AliasEvent.version_id == current.id)
            .order_by(AliasEvent.id.desc())
            .limit(1)
        )
        if last is None or last.previous_version_id is None:
            raise Conflict(f"{alias} has no earlier version to roll back to")
        previous = session.get(AdapterVersion, last.previous_version_id)
        assert previous is not None
        target = previous
    if target.id == current.id:
        raise Conflict(f"{alias} already points at {target.name}")
    return _move(session, project_id, alias, target, current, "rollback", actor, reason, False, {}, now)


def _move(
    session: Session,
    project_id: int,
    alias: str,
    version: AdapterVersion,
    current: AdapterVersion | None,
    action: str,
    actor: str,
    reason: str | None,
    forced: bool,
    verdict: dict[str, Any],
    now: datetime | None,
) -> AliasEvent:
    now = now or utcnow()
    row = session.get(AdapterAlias, (project_id, alias))
    if row is None:
        session.add(AdapterAlias(project_id=project_id, alias=alias, version_id=version.id, updated_at=now))
    else:
        row.version_id, row.updated_at = version.id, now
    event = AliasEvent(
        project_id=project_id,
        alias=alias,
        action=action,
        version_id=version.id,
        previous_version_id=current.id if current is not None else None,
        actor=actor,
        reason=reason,
        forced=forced,
        gate=verdict,
        created_at=now,
    )
    session.add(event)
    session.flush()
    return event


def history(session: Session, project_id: int, alias: str | None = None) -> list[AliasEvent]:
    query = select(AliasEvent).where(AliasEvent.project_id == project_id)
    if alias is not None:
        query = query.where(AliasEvent.alias == alias)
    return list(session.scalars(query.order_by(AliasEvent.id.desc())))


def copy_out(version: AdapterVersion, out_dir: Path) -> Path:
    """Copy a verified version directory (adapter + manifest) to `out_dir/<name>`; refuses to overwrite."""
    source = verified_path(version)
    target = out_dir / version.name
    if target.exists():
        raise Conflict(f"{target} already exists")
    shutil.copytree(source, target)
    artifacts.verify(target, version.manifest_sha256)
    return target


def clear_alias(
    session: Session,
    project_id: int,
    alias: str,
    *,
    actor: str,
    reason: str,
    gate: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AliasEvent:
    """Take `alias` away, so that it points at no version (the gateway then serves a cleared canary's share with
    production). Recorded as a `clear` event whose `version_id` and `previous_version_id` are the version the alias
    left. Never gated, like a rollback."""
    if alias not in ALIASES:
        raise InvalidInput(f"alias: {alias!r} is not one of {list(ALIASES)}")
    _lock_project(session, project_id)
    row = session.get(AdapterAlias, (project_id, alias))
    if row is None:
        raise NotFound(f"alias {alias!r} points at no version; nothing to clear")
    now = now or utcnow()
    event = AliasEvent(
        project_id=project_id,
        alias=alias,
        action="clear",
        version_id=row.version_id,
        previous_version_id=row.version_id,
        actor=actor,
        reason=reason,
        forced=False,
        gate=gate or {},
        created_at=now,
    )
    session.delete(row)
    session.add(event)
    session.flush()
    return event
