"""Test fixtures: a Postgres database created for this run (and a SQLite file), migrated once; a real uvicorn
server per backend; every test makes its own projects, so tests share nothing and need no cleanup between them.
One tiny code model is bootstrapped once per test session and shared by the training and demo tests."""

import inspect
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn

from core import migrate
from core.db import get_engine, session_scope
from core.projects import Role, create_key, create_project
from core.settings import Settings
from demo.bootstrap import RENTED_MODEL, TINY_MODEL, bootstrap, built_with, is_bootstrap_output

PG_ADMIN = os.environ.get("EDITLOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"editloop_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    migrate.upgrade(url)
    yield url
    get_engine(url).dispose()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'editloop.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    db_url: str
    settings: Settings


def start_server(settings: Settings) -> tuple[uvicorn.Server, threading.Thread, str]:
    from api.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


TEST_LIMITS = dict(max_request_bytes=256 * 1024, max_events_per_batch=50, max_text_chars=20_000, auth_cache_ttl_s=0)


@pytest.fixture(scope="session")
def server(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real HTTP server on loopback, one per backend, with small limits so tests can reach them."""
    settings = Settings(database_url=db_url, data_dir=tmp_path_factory.mktemp("data"), **TEST_LIMITS)
    srv, thread, url = start_server(settings)
    yield Server(url=url, db_url=db_url, settings=settings)
    srv.should_exit = True
    thread.join(timeout=10)


@dataclass
class Tenant:
    name: str
    ingest: httpx.Client
    admin: httpx.Client
    ingest_key: str
    admin_key: str


def make_tenant(server: Server, excluded_paths: list[str] | None = None) -> Tenant:
    name = f"p-{uuid.uuid4().hex[:10]}"
    with session_scope(server.db_url) as session:
        project = create_project(session, name, excluded_paths)
        _, ingest_key = create_key(session, project, Role.ingest)
        _, admin_key = create_key(session, project, Role.admin)

    def client(key: str) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)

    return Tenant(name, client(ingest_key), client(admin_key), ingest_key, admin_key)


@pytest.fixture
def tenant(server: Server) -> Iterator[Tenant]:
    t = make_tenant(server)
    yield t
    t.ingest.close()
    t.admin.close()


@pytest.fixture
def tenant_factory(server: Server) -> Iterator[object]:
    made: list[Tenant] = []

    def make(excluded_paths: list[str] | None = None) -> Tenant:
        made.append(make_tenant(server, excluded_paths))
        return made[-1]

    yield make
    for t in made:
        t.ingest.close()
        t.admin.close()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's environment or .env."""
    for var in list(os.environ):
        if var.startswith("EDITLOOP_") and var != "EDITLOOP_TEST_PG":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def test_broker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("broker")


@pytest.fixture(autouse=True)
def _test_broker(test_broker_dir: Path) -> None:
    """Messages sent after a commit (a queued run, a re-queued one) go to a SQLite broker of this test session, not
    to whatever the last test configured or to Celery's default of an AMQP server on localhost."""
    from core.queue import configure

    configure(Settings(data_dir=test_broker_dir))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bootstrap output directory (model, tokenizer, editloop-bootstrap.json); treat it as read-only. Set
    EDITLOOP_TINY_MODEL to a bootstrap output to skip the build while iterating on other tests."""
    prebuilt = os.environ.get("EDITLOOP_TINY_MODEL")
    if prebuilt and is_bootstrap_output(Path(prebuilt)):
        return Path(prebuilt)
    path = tmp_path_factory.mktemp("tiny-model") / "model"
    bootstrap(path, TINY_MODEL)
    return path


@pytest.fixture(scope="session")
def rented_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`editloop demo --upstream`'s rented model (RENTED_MODEL: larger and longer-trained than the tiny one), built
    once per session; EDITLOOP_RENTED_MODEL names a prebuilt one, as EDITLOOP_TINY_MODEL does for `tiny_model`."""
    prebuilt = os.environ.get("EDITLOOP_RENTED_MODEL")
    if prebuilt and built_with(Path(prebuilt), RENTED_MODEL):
        return Path(prebuilt)
    path = tmp_path_factory.mktemp("rented-model") / "model"
    bootstrap(path, RENTED_MODEL)
    return path


# Tests that load or train a model: `pytest -m "not ml"` (make test-fast) runs the rest in a minute or two.
ML_DIRECTORIES = ("trainers", "demo", "serving", "rewards", "ml")
ML_FIXTURES = {"tiny_model", "rented_model", "serving_model"}
ML_HELPERS = ("tests.trainers.tiny", "tests.tiny_llama")


def _uses_ml_helpers(module: object) -> bool:
    """Whether a test module imported one of the helpers that build models (the module, or names from it)."""
    for value in vars(module).values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if name in ML_HELPERS:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        top = Path(str(item.path)).relative_to(tests_dir).parts[0]
        module = getattr(item, "module", None)
        if (
            top in ML_DIRECTORIES
            or ML_FIXTURES & set(getattr(item, "fixturenames", ()))
            or (module is not None and _uses_ml_helpers(module))
        ):
            item.add_marker(pytest.mark.ml)
