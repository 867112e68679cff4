from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api import audit
from api.deps import AdminKey, SessionDep
from core.errors import NotFound
from core.projects import Project
from feedback.snapshots import dataset_config
from trainers.config import model_settings, upstream_settings

router = APIRouter(tags=["project"])


class SettingsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: dict[str, Any] | None = Field(None, description="Fields of the model settings to change (null unsets).")
    dataset: dict[str, Any] | None = Field(None, description="Fields of the dataset settings to change.")
    upstream: dict[str, Any] | None = Field(
        None, description="Fields of the upstream (the rented OpenAI-compatible model) to change; never a key."
    )


class SettingsOut(BaseModel):
    name: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    upstream: dict[str, Any]


def _out(project: Project) -> SettingsOut:
    return SettingsOut(
        name=project.name,
        model=model_settings(project.settings).model_dump(mode="json"),
        dataset=dataset_config(project).model_dump(mode="json"),
        upstream=upstream_settings(project.settings).model_dump(mode="json"),
    )


@router.get("/v1/project/settings", summary="The project's model and dataset settings, defaults included")
def get_project_settings(session: SessionDep, key: AdminKey) -> SettingsOut:
    project = session.get(Project, key.project_id)
    if project is None:
        raise NotFound("project does not exist")
    return _out(project)


@router.patch("/v1/project/settings", summary="Change model settings (base model, auto-promotion) or dataset gates")
def patch_project_settings(body: SettingsPatch, request: Request, session: SessionDep, key: AdminKey) -> SettingsOut:
    project = session.get(Project, key.project_id)
    if project is None:
        raise NotFound("project does not exist")
    settings = dict(project.settings or {})
    for section, changes in (("model", body.model), ("dataset", body.dataset), ("upstream", body.upstream)):
        if changes is None:
            continue
        merged = {**settings.get(section, {}), **changes}
        settings[section] = {k: v for k, v in merged.items() if v is not None}
    project.settings = settings
    out = _out(project)  # validates both sections; a bad field is a 422 naming it
    changes = {
        f"{section}.{k}": v for section in ("model", "dataset") for k, v in (getattr(body, section) or {}).items()
    }
    audit.record(session, request, key, "settings.change", f"project:{project.name}", changes=changes)
    session.commit()
    return out
