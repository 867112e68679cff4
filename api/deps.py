"""Request dependencies: the database session and the caller's key."""

import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from core.errors import PermissionDenied, Unauthenticated
from core.projects import Principal, Role, authenticate, hash_key
from core.settings import Settings


def settings_of(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def sessions_of(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    with sessions_of(request)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


class KeyCache:
    """Verified keys, kept briefly in-process so that ingest does not query the key table per request.
    A revoked key keeps working in a process for at most `auth_cache_ttl_s`."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, principal: Principal) -> None:
        if self.ttl_s > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl_s, principal)


async def principal(request: Request) -> Principal:
    return await authenticated(request.app, request.headers.get("authorization"))


async def authenticated(app: Any, header: str | None) -> Principal:
    """The caller of an `Authorization` header value: from the key cache, or looked up (and then cached)."""
    if not header:
        raise Unauthenticated("Authorization: missing; send `Authorization: Bearer <key>`")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthenticated("Authorization: expected `Bearer <key>`")
    key = key.strip()
    cache: KeyCache = app.state.key_cache
    digest = hash_key(key)
    found = cache.get(digest)
    if found is None:
        sessions: sessionmaker[Session] = app.state.sessions

        def lookup() -> Principal | None:
            with sessions() as session:
                return authenticate(session, key)

        found = await run_in_threadpool(lookup)
        if found is None:
            raise Unauthenticated("Authorization: unknown or revoked key")
        cache.put(digest, found)
    return found


async def _admin_key(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if who.role is not Role.admin:
        raise PermissionDenied(f"this needs an admin key; the key given has role {who.role.value!r}")
    return who


IngestKey = Annotated[Principal, Depends(principal)]  # every role may post feedback
AdminKey = Annotated[Principal, Depends(_admin_key)]
