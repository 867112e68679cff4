"""A real `editloop serve` in a subprocess on an SQLite file, which a test can kill and start again on the same
port, and a project with keys made through the service functions the CLI uses."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from core import migrate
from core.db import session_scope
from core.projects import Role, create_key, create_project
from feedback.models import FeedbackEvent
from tests.conftest import free_port

ROOT = Path(__file__).parents[2]


@dataclass
class LiveServer:
    db_url: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "EDITLOOP_DATABASE_URL": self.db_url,
            "EDITLOOP_DATA_DIR": str(self.data_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / f"serve-{self.port}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port), "--no-background"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"editloop serve did not start: {log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the server and nothing else
            self.proc.wait()

    def stored(self, project: str) -> list[str]:
        """Every stored event id of the project, with repeats if there were any."""
        from core.projects import Project

        with session_scope(self.db_url) as session:
            pid = session.scalar(select(Project.id).where(Project.name == project))
            return list(session.scalars(select(FeedbackEvent.event_id).where(FeedbackEvent.project_id == pid)))


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("live")
    url = f"sqlite:///{root / 'editloop.db'}"
    migrate.upgrade(url)
    server = LiveServer(url, root / "data")
    server.start()
    yield server
    server.kill()


@dataclass
class Keys:
    project: str
    ingest: str
    admin: str


@pytest.fixture
def keys(live: LiveServer) -> Keys:
    name = f"sdk-{os.urandom(4).hex()}"
    with session_scope(live.db_url) as session:
        project = create_project(session, name)
        _, ingest = create_key(session, project, Role.ingest)
        _, admin = create_key(session, project, Role.admin)
    return Keys(name, ingest, admin)
