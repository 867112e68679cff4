"""What every CLI module shares: the consoles, the error exit, and the schema check."""

import typer
from rich.console import Console

from core import migrate
from core.settings import Settings

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
