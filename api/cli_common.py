"""What every CLI module shares: the consoles, the error exit, and the schema check."""

import getpass
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from core import audit, migrate
from core.db import session_scope
from core.errors import EditloopError
from core.projects import Project, get_project
from core.settings import Settings, get_settings

console = Console()
err = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def ready_schema(settings: Settings) -> None:
    """The embedded database is brought up to date by itself; a server database must be upgraded on purpose."""
    url = settings.sqlalchemy_url
    if settings.is_embedded:
        if migrate.current_revision(url) != migrate.head_revision(url):
            migrate.upgrade(url)
        return
    current, head = migrate.current_revision(url), migrate.head_revision(url)
    if current != head:
        raise fail(f"the database is at revision {current}, the code needs {head}: run `editloop db upgrade`")


@contextmanager
def project_scope(name: str) -> Iterator[tuple[Session, Project]]:
    """A transaction with the named project for a command; a domain error ends the command with its message."""
    settings = get_settings()
    ready_schema(settings)
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            yield session, get_project(session, name)
    except EditloopError as exc:
        raise fail(exc.detail) from None


def cli_actor() -> str:
    """Who runs a command, for the audit log: the operating system's user (the CLI holds no key)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def audited(session: Session, project_id: int | None, action: str, target: str | None = None, **details: Any) -> None:
    audit.record(session, project_id, action, actor=cli_actor(), address="local", target=target, **details)
