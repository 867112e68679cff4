"""The collector: FastAPI app factory. It never imports torch or the training stack, so it starts in a second."""

from fastapi import FastAPI
from sqlalchemy import text

from api import errors
from api.deps import KeyCache, SessionDep
from api.routes import events, generations, integrations
from core.db import get_sessionmaker
from core.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="editloop",
        version="0.1.0",
        description="Collects what editor users do with generated code, so a coding tool can train its own model.",
    )
    app.state.settings = settings
    app.state.sessions = get_sessionmaker(settings.sqlalchemy_url, settings.db_pool_size)
    app.state.key_cache = KeyCache(settings.auth_cache_ttl_s)
    errors.install(app)
    app.include_router(events.router)
    app.include_router(integrations.router)
    app.include_router(generations.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz(session: SessionDep) -> dict[str, str]:
        session.execute(text("SELECT 1"))
        return {"status": "ready"}

    return app
