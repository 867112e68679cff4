from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import AdminKey, SessionDep
from feedback import service
from feedback.schemas import GenerationOut, GenerationPage

router = APIRouter(tags=["feedback"])


@router.get("/v1/generations/{generation_id}", summary="The joined record of one generation")
def get_generation(generation_id: str, session: SessionDep, key: AdminKey) -> GenerationOut:
    found = service.get_generation(session, key.project_id, generation_id)
    session.commit()  # what the read folded
    return found


@router.get("/v1/generations", summary="List generations, oldest first, with cursor paging")
def list_generations(
    session: SessionDep,
    key: AdminKey,
    outcome: Literal["pending", "shown", "accepted", "rejected", "edited"] | None = None,
    model: str | None = None,
    since: Annotated[datetime | None, Query(description="Only generations changed at or after this time.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> GenerationPage:
    page = service.list_generations(
        session, key.project_id, outcome=outcome, model=model, since=since, cursor=cursor, limit=limit
    )
    session.commit()  # what the read folded
    return page
