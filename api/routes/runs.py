from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from api import audit
from api.deps import AdminKey, SessionDep
from trainers import runs
from trainers.schemas import RunCreate, RunList, RunOut

router = APIRouter(tags=["training"])


@router.post("/v1/runs", status_code=status.HTTP_202_ACCEPTED, summary="Queue a training run (one active per project)")
def create_run(body: RunCreate, request: Request, session: SessionDep, key: AdminKey) -> RunOut:
    run = runs.create_run(
        session, key.project_id, body.kind, body.config, snapshot_id=body.snapshot_id, actor=f"key {key.key_id}"
    )
    out = RunOut.model_validate(run)
    audit.record(session, request, key, "run.create", f"run:{run.id}", kind=body.kind, snapshot_id=run.snapshot_id)
    session.commit()  # sends the run's message
    return out


@router.get("/v1/runs", summary="The project's training runs, newest first")
def list_runs(session: SessionDep, key: AdminKey, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> RunList:
    return RunList(items=[RunOut.model_validate(r) for r in runs.list_runs(session, key.project_id, limit)])


@router.get("/v1/runs/{run_id}", summary="A run: status, progress (step of total, ETA), live metrics, error")
def get_run(run_id: int, session: SessionDep, key: AdminKey) -> RunOut:
    return RunOut.model_validate(runs.get_run(session, key.project_id, run_id))


@router.post("/v1/runs/{run_id}/cancel", summary="Cancel a queued run, or stop a running one at its next step")
def cancel_run(run_id: int, request: Request, session: SessionDep, key: AdminKey) -> RunOut:
    out = RunOut.model_validate(runs.cancel_run(session, key.project_id, run_id))
    audit.record(session, request, key, "run.cancel", f"run:{run_id}")
    session.commit()
    return out
