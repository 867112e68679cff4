from fastapi import APIRouter

from api.deps import AdminKey, SessionDep
from feedback import snapshots
from feedback.snapshot_schemas import SnapshotDetail, SnapshotList, SnapshotOut

router = APIRouter(tags=["datasets"])


@router.get("/v1/datasets", summary="The project's dataset snapshots, newest first")
def list_datasets(session: SessionDep, key: AdminKey) -> SnapshotList:
    items = snapshots.list_snapshots(session, key.project_id)
    return SnapshotList(items=[SnapshotOut.model_validate(s) for s in items])


@router.get("/v1/datasets/{snapshot_id}", summary="One dataset snapshot, with the build it was cut after")
def get_dataset(snapshot_id: int, session: SessionDep, key: AdminKey) -> SnapshotDetail:
    return snapshots.snapshot_detail(session, key.project_id, snapshot_id)
