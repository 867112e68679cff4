"""Projects (tenants) and their API keys. Keys are random tokens stored as sha256 digests: a key has enough entropy
that a slow hash buys nothing, and a fast one keeps authentication off the ingest hot path."""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, BigId, UTCDateTime, utcnow
from core.errors import Conflict, InvalidInput, NotFound

KEY_PREFIX = "elk_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class Role(StrEnum):
    ingest = "ingest"  # editors: post feedback
    admin = "admin"  # ML engineers: everything an ingest key may do, plus reading data and running training


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # Globs of file paths whose code is never stored (outcome only), e.g. [".env*", "*.pem"].
    excluded_paths: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Per-project knobs of other packages (e.g. feedback.config.DatasetConfig), validated by their owners.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, so a person can tell keys apart without the key itself.
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project every query is scoped to, and what the key may do."""

    project_id: int
    role: Role
    key_id: int
    # Read with the key and cached with it, so ingest needs no query for it.
    excluded_paths: tuple[str, ...] = ()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_project(session: Session, name: str, excluded_paths: list[str] | None = None) -> Project:
    if not _NAME.match(name):
        raise InvalidInput(f"name: {name!r} must be 1-63 of a-z, 0-9, '_', '.', '-', starting alphanumeric")
    project = Project(name=name, excluded_paths=list(excluded_paths or []))
    session.add(project)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"name: project {name!r} already exists") from None
    return project


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"project {name!r} does not exist")
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.name)))


def set_excluded_paths(session: Session, project: Project, globs: list[str]) -> None:
    for i, glob in enumerate(globs):
        if not glob or len(glob) > 255:
            raise InvalidInput(f"excluded_paths[{i}]: must be 1-255 characters")
    project.excluded_paths = list(globs)


def create_key(session: Session, project: Project, role: Role) -> tuple[ApiKey, str]:
    """Returns the stored key and the plain key, which is shown once and never stored."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(project_id=project.id, role=role.value, key_hash=hash_key(plain), hint=plain[:10])
    session.add(key)
    session.flush()
    return key, plain


def list_keys(session: Session, project: Project) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).where(ApiKey.project_id == project.id).order_by(ApiKey.id)))


def revoke_key(session: Session, project: Project, key_id: int) -> None:
    key = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.project_id == project.id))
    if key is None:
        raise NotFound(f"key {key_id} does not exist in project {project.name!r}")
    key.revoked_at = key.revoked_at or utcnow()


def authenticate(session: Session, plain: str) -> Principal | None:
    found = session.execute(
        select(ApiKey, Project.excluded_paths)
        .join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))
    ).first()
    if found is None:
        return None
    key, excluded = found
    return Principal(key.project_id, Role(key.role), key.id, tuple(excluded or ()))
