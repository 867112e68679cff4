"""Migrations go up to head and back down to base, and head matches the ORM models exactly."""

import uuid

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import core.projects  # noqa: F401
import feedback.models  # noqa: F401
import trainers.models  # noqa: F401
from core import migrate
from core.db import Base
from tests.conftest import PG_ADMIN


@pytest.fixture(params=["postgres", "sqlite"])
def fresh_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    name = f"editloop_mig_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    yield url
    from core.db import get_engine

    get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_up_down_and_models_match(fresh_url):
    migrate.upgrade(fresh_url)
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff
    assert {"projects", "api_keys", "feedback_events", "generations"} <= set(inspect(engine).get_table_names())
    migrate.downgrade(fresh_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(fresh_url)
    assert migrate.current_revision(fresh_url) == migrate.head_revision(fresh_url)
    engine.dispose()
