from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api import audit
from api.deps import AdminKey, SessionDep
from feedback import consent

router = APIRouter(tags=["data rights"])


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["user", "repository"] = Field("user", description="repository: a generation's metadata.repository.")
    subject: str = Field(min_length=1, max_length=1024, description="The user id, or the repository.")
    opted_out: bool = Field(True, description="true: opt out from now on; false: opt back in.")


class ConsentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    kind: str
    subject: str
    opted_out: bool
    changed_at: datetime
    changed_by: str


class ConsentList(BaseModel):
    items: list[ConsentOut]


@router.post("/v1/consent", summary="Opt a user or repository out of training (or back in); the past is kept")
def set_consent(body: ConsentIn, request: Request, session: SessionDep, key: AdminKey) -> ConsentOut:
    found = consent.set_consent(session, key.project_id, body.kind, body.subject, body.opted_out, audit.actor(key))
    audit.record(
        session, request, key, "consent.set", consent.subject_digest(body.kind, body.subject), opted_out=body.opted_out
    )
    out = ConsentOut.model_validate(found)
    session.commit()
    return out


@router.get("/v1/consent", summary="The project's consent records (opt-outs and opt-ins)")
def list_consent(session: SessionDep, key: AdminKey, opted_out_only: bool = False) -> ConsentList:
    return ConsentList(
        items=[ConsentOut.model_validate(c) for c in consent.list_consents(session, key.project_id, opted_out_only)]
    )
