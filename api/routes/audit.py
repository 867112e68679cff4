from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AdminKey, SessionDep
from core import audit

router = APIRouter(tags=["data rights"])


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str = Field(description="key:ID for the API, cli:USER for the command line, schedule for the schedule.")
    address: str = Field(description="The client's address, or local.")
    action: str
    target: str | None
    details: dict[str, Any]


class AuditList(BaseModel):
    items: list[AuditOut] = Field(description="Newest first.")


@router.get("/v1/audit", summary="The audit log of admin actions: who, when, what, from where")
def list_audit(
    session: SessionDep,
    key: AdminKey,
    action: Annotated[str | None, Query(description="An action (adapter.promote) or a prefix (adapter.).")] = None,
    actor: Annotated[str | None, Query(description="key:ID or cli:USER.")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    found = audit.entries(session, key.project_id, action=action, actor=actor, since=since, until=until, limit=limit)
    return AuditList(items=[AuditOut.model_validate(e) for e in found])
