"""Console sessions. Signing in takes an admin key; the browser then holds a cookie, never the key:
`{key_id}.{expires}.{nonce}.{signature}`, signed with HMAC keyed by the key's stored digest. So no secret has to be
shared between server processes, and revoking the key (or its project) ends its sessions on the next request.

CSRF: every form and script that changes something sends a token derived from the same session (HMAC of its nonce),
checked against the cookie; the cookie is also SameSite=Strict and HttpOnly, and a cross-site Origin is refused."""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import PermissionDenied
from core.projects import ApiKey, Principal, Project, Role

COOKIE = "editloop_console"
LIFETIME_S = 12 * 3600


@dataclass(frozen=True)
class ConsoleSession:
    principal: Principal
    project: str
    key_hint: str
    csrf: str


def _sign(digest: str, message: str) -> str:
    return hmac.new(digest.encode(), message.encode(), hashlib.sha256).hexdigest()


def issue(key: ApiKey, now: float | None = None) -> str:
    """The cookie value for a signed-in admin key."""
    body = f"{key.id}.{int((now or time.time()) + LIFETIME_S)}.{secrets.token_urlsafe(16)}"
    return f"{body}.{_sign(key.key_hash, body)}"


def read(session: Session, cookie: str | None, now: float | None = None) -> ConsoleSession | None:
    """The session a cookie proves, or None (no cookie, forged, expired, key revoked or no longer admin)."""
    if not cookie or cookie.count(".") != 3:
        return None
    key_id, expires, nonce, signature = cookie.split(".")
    if not key_id.isdigit() or not expires.isdigit() or int(expires) < (now or time.time()):
        return None
    found = session.execute(
        select(ApiKey, Project.name, Project.excluded_paths)
        .join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.id == int(key_id), ApiKey.revoked_at.is_(None))
    ).first()
    if found is None:
        return None
    key, project, excluded = found
    if key.role != Role.admin.value or not hmac.compare_digest(
        signature, _sign(key.key_hash, f"{key_id}.{expires}.{nonce}")
    ):
        return None
    principal = Principal(key.project_id, Role.admin, key.id, tuple(excluded or ()))
    return ConsoleSession(principal, project, key.hint, _sign(key.key_hash, f"csrf.{nonce}"))


def check_csrf(request: Request, who: ConsoleSession, token: str | None) -> None:
    """Refuse a state-changing request without this session's token, or sent from another origin."""
    origin = request.headers.get("origin")
    if origin and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        raise PermissionDenied(f"origin: {origin} is not this console's")
    if not token or not hmac.compare_digest(token, who.csrf):
        raise PermissionDenied("csrf_token: missing or not this session's; reload the page and try again")
