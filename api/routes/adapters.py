import tarfile
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api import audit
from api.deps import AdminKey, SessionDep
from trainers import canary, gate, registry, rights
from trainers.models import AdapterVersion, AliasEvent
from trainers.schemas import (
    AliasEventList,
    AliasEventOut,
    LiveComparisonOut,
    LiveMetricsOut,
    PromoteIn,
    RollbackIn,
    VersionDetail,
    VersionList,
    VersionOut,
)

router = APIRouter(tags=["adapters"])


def _names(session: Session, project_id: int) -> tuple[dict[int, list[str]], dict[str, str]]:
    by_version: dict[int, list[str]] = {}
    names: dict[str, str] = {}
    for alias, version_id in registry.aliases(session, project_id).items():
        by_version.setdefault(version_id, []).append(alias)
        version = session.get(AdapterVersion, version_id)
        if version is not None:
            names[alias] = version.name
    return by_version, names


def _flags(flags: list[Any]) -> list[dict[str, Any]]:
    return [{"deletion_id": f.deletion_id, "reason": f.reason, "at": f.created_at.isoformat()} for f in flags]


def _event(session: Session, event: AliasEvent) -> AliasEventOut:
    def name(version_id: int | None) -> str | None:
        version = session.get(AdapterVersion, version_id) if version_id is not None else None
        return version.name if version is not None else None

    data: dict[str, Any] = {c: getattr(event, c) for c in ("id", "alias", "action", "actor", "reason", "forced")}
    return AliasEventOut(
        **data,
        version=name(event.version_id) or "?",
        previous_version=name(event.previous_version_id),
        gate=event.gate,
        summary=gate.summary(event.gate or {}),
        created_at=event.created_at,
    )


@router.get("/v1/adapters", summary="Adapter versions (policy and reward), newest first, and the aliases")
def list_adapters(session: SessionDep, key: AdminKey, kind: str | None = None) -> VersionList:
    by_version, names = _names(session, key.project_id)
    flags = rights.flags_of(session, key.project_id)
    items = [
        VersionOut.model_validate(v).model_copy(
            update={"aliases": by_version.get(v.id, []), "deleted_data": _flags(flags.get(v.id, []))}
        )
        for v in registry.list_versions(session, key.project_id, kind)
    ]
    return VersionList(items=items, aliases=names)


@router.get(
    "/v1/adapters/history",
    summary="Every promotion and rollback: who, when, why, and the gate's paired verdict against base and production",
)
def alias_history(session: SessionDep, key: AdminKey, alias: str | None = None) -> AliasEventList:
    return AliasEventList(items=[_event(session, e) for e in registry.history(session, key.project_id, alias)])


Since = Annotated[
    datetime | None, Query(description="Only generations shown at or after this time (ISO 8601; naive is UTC).")
]


@router.get("/v1/adapters/compare", summary="Live feedback of version a against b, with significance tests")
def compare_adapters(
    session: SessionDep,
    key: AdminKey,
    a: Annotated[str, Query(description="Version name, alias or `base`; differences and verdicts are about a.")],
    b: Annotated[str, Query(description="Version name, alias or `base` to compare a against.")],
    since: Since = None,
    alpha: Annotated[float | None, Query(gt=0, lt=0.5, description="Default: model.canary_alpha.")] = None,
    min_samples: Annotated[int | None, Query(ge=1, description="Default: model.canary_min_samples.")] = None,
) -> LiveComparisonOut:
    result = canary.compare(session, key.project_id, a, b, since=since, alpha=alpha, min_samples=min_samples)
    session.commit()  # what the read folded
    return LiveComparisonOut.model_validate(result)


@router.get("/v1/adapters/{ref}/metrics", summary="Live acceptance, edit rate and edit distance of a version")
def adapter_metrics(ref: str, session: SessionDep, key: AdminKey, since: Since = None) -> LiveMetricsOut:
    metrics = canary.version_metrics(session, key.project_id, ref, since)
    session.commit()  # what the read folded
    return LiveMetricsOut.model_validate(canary.without_distances(metrics))


@router.get("/v1/adapters/{ref}", summary="One version (by name or alias) with its manifest")
def get_adapter(ref: str, session: SessionDep, key: AdminKey) -> VersionDetail:
    version = registry.get_version(session, key.project_id, ref)
    by_version, _ = _names(session, key.project_id)
    flags = _flags(rights.flags_of(session, key.project_id).get(version.id, []))
    return VersionDetail.model_validate(version).model_copy(
        update={"aliases": by_version.get(version.id, []), "deleted_data": flags}
    )


@router.post("/v1/adapters/{ref}/promote", summary="Move an alias to this version, if the promotion gate passes")
def promote(ref: str, body: PromoteIn, request: Request, session: SessionDep, key: AdminKey) -> AliasEventOut:
    event = registry.promote(
        session, key.project_id, ref, alias=body.alias, actor=f"key {key.key_id}", reason=body.reason, force=body.force
    )
    out = _event(session, event)
    audit.record(
        session, request, key, "adapter.promote", f"adapter:{out.version}", alias=body.alias, forced=out.forced
    )
    session.commit()
    return out


@router.post("/v1/aliases/{alias}/rollback", summary="Point an alias back at the version it held before")
def rollback(alias: str, body: RollbackIn, request: Request, session: SessionDep, key: AdminKey) -> AliasEventOut:
    event = registry.rollback(
        session, key.project_id, alias=alias, actor=f"key {key.key_id}", reason=body.reason, to=body.to
    )
    out = _event(session, event)
    audit.record(session, request, key, "adapter.rollback", f"adapter:{out.version}", alias=alias)
    session.commit()
    return out


@router.get("/v1/adapters/{ref}/download", summary="The version's directory as a .tar.gz (checksums verified)")
def download(ref: str, request: Request, session: SessionDep, key: AdminKey) -> StreamingResponse:
    version = registry.get_version(session, key.project_id, ref)
    path = registry.verified_path(version)
    name = version.name
    audit.record(session, request, key, "adapter.download", f"adapter:{name}", manifest_sha256=version.manifest_sha256)
    session.commit()
    session.close()  # the stream outlives the request's session

    def stream() -> Iterator[bytes]:
        with tempfile.TemporaryFile() as buffer:
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                tar.add(path, arcname=name)
            buffer.seek(0)
            while chunk := buffer.read(1 << 16):
                yield chunk

    headers = {"Content-Disposition": f'attachment; filename="{name}.tar.gz"'}
    return StreamingResponse(stream(), media_type="application/gzip", headers=headers)
