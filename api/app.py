"""The collector: FastAPI app factory. It never imports torch or the training stack, so it starts in a second."""

import gc
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from sqlalchemy import text

from api import edge, errors, metrics
from api.console.pages import install as install_console
from api.console.pages import router as console_router
from api.console.static import mount as mount_console_static
from api.deps import KeyCache, SessionDep
from api.fold_worker import FoldWorker
from api.group_commit import GroupCommitter
from api.observe import observe
from api.routes import adapters, consent, datasets, deletions, events, generations, integrations, openai, project, runs
from api.routes import audit as audit_routes
from core.db import get_sessionmaker
from core.errors import PermissionDenied
from core.queue import configure as configure_queue
from core.settings import Settings, get_settings


class Collector(FastAPI):
    """The app, with one entrance ahead of FastAPI's stack: POST /v1/events with a Content-Length goes straight to
    `events.ingest_directly` (see api/routes/events.py for why). Middleware added to this app does not see those
    requests."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await observe(self._dispatch, scope, receive, send)  # request id, latency histogram, access log

    async def _dispatch(self, scope: Any, receive: Any, send: Any) -> None:
        if events.is_ingest(scope) and await events.ingest_directly(self, scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.folder = FoldWorker(app.state.sessions, settings.fold_delay_ms / 1000, settings.fold_batch_rows)
        app.state.group_commit = GroupCommitter(
            app.state.sessions,
            max_events=settings.group_commit_max_events,
            max_wait_s=settings.group_commit_wait_ms / 1000,
            max_queued=settings.group_commit_max_queued,
            writers=settings.group_commit_writers,
            eager=settings.group_commit_eager,
            settings=settings,
            after_commit=app.state.folder.poke if settings.ingest_fold == "deferred" else None,
        )
        # The folder stops after the committer: what the last requests queued is folded on the way out.
        async with app.state.folder, app.state.group_commit:
            # What exists now lives as long as the process: the collector's full collections need not scan it.
            gc.freeze()
            # The writers' threads wait for the GIL after every round trip to the database while the event loop runs
            # requests; CPython's default 5 ms turn made each transaction several times longer than its work.
            sys.setswitchinterval(0.001)
            yield  # on the way out, every request still waiting for its transaction is answered
        gateway = getattr(app.state, "gateway", None)
        if gateway is not None:
            await gateway.aclose()  # the upstreams' connection pool

    app = Collector(
        title="editloop",
        version="0.1.0",
        description="Collects what editor users do with generated code, so a coding tool can train its own model.",
        lifespan=lifespan,
        max_body_size=settings.max_request_bytes,  # refused as it streams in, before a route reads it whole
        dependencies=[Depends(edge.check_request)],  # every route's input, checked once
    )
    app.state.settings = settings
    configure_queue(settings)  # runs are queued from requests: messages go to this settings' broker
    app.state.sessions = get_sessionmaker(settings.sqlalchemy_url, settings.db_pool_size)
    app.state.key_cache = KeyCache(settings.auth_cache_ttl_s)
    app.state.gateway = None  # serving.gateway.Gateway, made on the first /v1/models or completion request
    errors.install(app)
    app.include_router(events.router)
    app.include_router(integrations.router)
    app.include_router(generations.router)
    app.include_router(datasets.router)
    app.include_router(runs.router)
    app.include_router(adapters.router)
    app.include_router(project.router)
    app.include_router(openai.router)
    app.include_router(deletions.router)
    app.include_router(consent.router)
    app.include_router(audit_routes.router)
    app.include_router(console_router)
    install_console(app)
    mount_console_static(app)
    app.state.metrics_registry = metrics.registry(app.state.sessions)

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        client = request.client.host if request.client else None
        if not metrics.allowed(settings.metrics_token, request.headers.get("authorization"), client):
            raise PermissionDenied(
                "metrics: send `Authorization: Bearer <EDITLOOP_METRICS_TOKEN>` (or scrape from loopback)"
            )
        body, content_type = metrics.exposition(app.state.metrics_registry)
        return Response(body, media_type=content_type)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz(session: SessionDep) -> dict[str, str]:
        session.execute(text("SELECT 1"))
        return {"status": "ready"}

    return app
