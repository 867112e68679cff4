"""Who did an admin action through the API, for the audit log (core/audit.py): the key's id and the client's
address. Never the key itself."""

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from core import audit
from core.projects import Principal


def actor(key: Principal) -> str:
    return f"key:{key.key_id}"


def address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def record(
    session: Session, request: Request, key: Principal, action: str, target: str | None = None, **details: Any
) -> None:
    audit.record(session, key.project_id, action, actor=actor(key), address=address(request), target=target, **details)
