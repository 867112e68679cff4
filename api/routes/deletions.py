from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api import audit
from api.deps import AdminKey, SessionDep
from feedback import deletion
from feedback.rights_models import DeletionRequest
from trainers import rights

router = APIRouter(tags=["data rights"])


class DeletionAccepted(BaseModel):
    id: int
    state: str


class DeletionOut(BaseModel):
    id: int
    state: str = Field(description="queued | running | done | failed")
    phase: str = Field(description="Where the walk is: generations, rows, snapshots, hashes, exports, versions, done.")
    selector: dict[str, Any] = Field(description="What was asked for; its values become digests once done.")
    trigger: str
    requested_by: str
    removed: dict[str, int] = Field(description="Counts per kind: events, generations, training_rows, snapshot_rows...")
    snapshots: list[dict[str, int]] = Field(description="Dataset snapshots that held the data: id, rows removed.")
    versions: list[dict[str, str]] = Field(description="Adapter versions that learned from it: name, reason.")
    retrain_run_id: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class DeletionList(BaseModel):
    items: list[DeletionOut] = Field(description="Newest first.")


def deletion_out(session: Session, request: DeletionRequest) -> DeletionOut:
    return DeletionOut(
        id=request.id,
        state=request.state,
        phase=request.phase,
        selector=request.selector,
        trigger=request.trigger,
        requested_by=request.requested_by,
        removed=request.counts or {},
        snapshots=[{"id": int(s), "rows_removed": n} for s, n in sorted((request.snapshots or {}).items())],
        versions=[{"name": n, "reason": r} for n, r in rights.flagged_versions(session, request.id)],
        retrain_run_id=request.retrain_run_id,
        error=request.error,
        created_at=request.created_at,
        started_at=request.started_at,
        finished_at=request.finished_at,
    )


SELECTOR = Body(
    description='Exactly one of {"user": U}, {"session": S}, {"generation_ids": [...]}, {"file_path": GLOB},'
    ' {"before": ISO time}.',
    examples=[{"user": "alice"}],
)


@router.post(
    "/v1/deletions",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Delete a user's (or session's, files', ids', older) data everywhere, in the background",
)
def create_deletion(
    selector: Annotated[dict[str, Any], SELECTOR], request: Request, session: SessionDep, key: AdminKey
) -> DeletionAccepted:
    found = rights.request_deletion(
        session,
        key.project_id,
        selector,
        trigger="api",
        actor=audit.actor(key),
        address=audit.address(request),
    )
    out = DeletionAccepted(id=found.id, state=found.state)
    session.commit()  # sends the request's message
    return out


@router.get("/v1/deletions", summary="The project's deletion requests, newest first")
def list_deletions(session: SessionDep, key: AdminKey, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> DeletionList:
    return DeletionList(
        items=[deletion_out(session, r) for r in deletion.list_requests(session, key.project_id, limit)]
    )


@router.get("/v1/deletions/{deletion_id}", summary="A deletion: its state, what it removed, what had used the data")
def get_deletion(deletion_id: int, session: SessionDep, key: AdminKey) -> DeletionOut:
    return deletion_out(session, deletion.get_request(session, key.project_id, deletion_id))
