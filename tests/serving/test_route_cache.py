"""What a model name resolves to is remembered per process for `serving_route_cache_s`: a change this process makes
(an alias, a version, the project's settings) is served from the next request; one made elsewhere, within the TTL."""

import time
import uuid

import pytest
from sqlalchemy import create_engine, text

from core.db import session_scope
from core.errors import NotFound
from core.projects import Project, create_project
from core.settings import Settings
from serving.gateway import Gateway
from trainers import registry

UPSTREAM = {"url": "http://127.0.0.1:9/v1", "model": "rented", "price_input_per_mtok": 1.0}


def project_on_upstream(db_url: str) -> int:
    """A project whose `production` is its upstream."""
    with session_scope(db_url) as session:
        project = create_project(session, f"routes-{uuid.uuid4().hex[:8]}")
        project.settings = {"upstream": UPSTREAM, "model": {"base_model": "/models/base"}}
        session.flush()
        registry.promote(session, project.id, "upstream", actor="test")
        return project.id


def resolve(gateway: Gateway, db_url: str, project_id: int, model: str) -> str:
    with session_scope(db_url) as session:
        return gateway.resolve(session, project_id, model, None).served


def test_a_change_made_elsewhere_is_served_within_the_ttl(db_url: str) -> None:
    gateway = Gateway(Settings(database_url=db_url, serving_route_cache_s=0.5))
    pid = project_on_upstream(db_url)
    assert resolve(gateway, db_url, pid, "production") == "upstream"
    cached = gateway.cached(pid, "production", None)
    assert cached is not None and cached.served == "upstream"

    # Another process moves production away: plain SQL on a connection of its own, unseen by this process's ORM.
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM adapter_aliases WHERE project_id = :p"), {"p": pid})
    engine.dispose()
    remembered = gateway.cached(pid, "production", None)
    assert remembered is not None and remembered.served == "upstream"  # within the TTL: what was read
    time.sleep(0.6)
    assert gateway.cached(pid, "production", None) is None  # expired: the next request reads the database
    with pytest.raises(NotFound, match="production"):
        resolve(gateway, db_url, pid, "production")


def test_a_change_this_process_makes_is_served_from_the_next_request(db_url: str) -> None:
    gateway = Gateway(Settings(database_url=db_url, serving_route_cache_s=60))
    pid = project_on_upstream(db_url)
    assert resolve(gateway, db_url, pid, "production") == "upstream"
    assert resolve(gateway, db_url, pid, "base") == "base"
    assert gateway.cached(pid, "base", None) is not None
    with session_scope(db_url) as session:  # the project's settings: every route of every project is read again
        project = session.get(Project, pid)
        assert project is not None
        project.settings = {**project.settings, "model": {"base_model": "/models/other"}}
    assert gateway.cached(pid, "base", None) is None
    assert gateway.cached(pid, "production", None) is None
    assert resolve(gateway, db_url, pid, "production") == "upstream"
    with session_scope(db_url) as session:  # an alias moved through the registry
        registry.clear_alias(session, pid, "production", actor="test", reason="test")
    assert gateway.cached(pid, "production", None) is None


def test_a_ttl_of_zero_reads_every_time(db_url: str) -> None:
    gateway = Gateway(Settings(database_url=db_url, serving_route_cache_s=0))
    pid = project_on_upstream(db_url)
    assert resolve(gateway, db_url, pid, "production") == "upstream"
    assert gateway.cached(pid, "production", None) is None
