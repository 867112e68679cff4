"""`editloop data`, `editloop consent` and `editloop audit`: deletion requests, opt-outs and the audit log."""

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from api.cli_common import audited, cli_actor, console, fail, project_scope, ready_schema
from core import audit
from core.db import session_scope
from core.errors import EditloopError
from core.projects import get_project
from core.settings import get_settings
from feedback import consent, deletion
from feedback.rights_models import DeletionRequest
from trainers import rights

data_app = typer.Typer(
    help="Data rights: delete a user's (or session's, files', old) data everywhere.", no_args_is_help=True
)
consent_app = typer.Typer(help="Opt users or repositories out of training (or back in).", no_args_is_help=True)
ProjectOpt = Annotated[str, typer.Option(help="Project name.")]


def _selector(
    user: str | None, session: str | None, generation_id: list[str] | None, file_path: str | None, before: str | None
) -> dict[str, Any]:
    given = {
        k: v
        for k, v in (
            ("user", user),
            ("session", session),
            ("generation_ids", generation_id or None),
            ("file_path", file_path),
            ("before", before),
        )
        if v is not None
    }
    if len(given) != 1:
        raise fail("give exactly one of --user, --session, --generation-id (repeatable), --file-path, --before")
    return given


def _show(request: DeletionRequest, versions: list[tuple[str, str]]) -> None:
    console.print(f"deletion [bold]{request.id}[/bold]: {request.state} (phase {request.phase})")
    console.print_json(
        data={
            "selector": request.selector,
            "removed": request.counts,
            "snapshots": {k: {"rows_removed": v} for k, v in (request.snapshots or {}).items()},
            "versions": [{"name": n, "reason": r} for n, r in versions],
            "retrain_run_id": request.retrain_run_id,
            "error": request.error,
        }
    )


@data_app.command("delete")
def data_delete(
    project: ProjectOpt,
    user: Annotated[str | None, typer.Option(help="Every generation of this user.")] = None,
    session: Annotated[str | None, typer.Option(help="Every generation of this session.")] = None,
    generation_id: Annotated[list[str] | None, typer.Option(help="A generation id (repeat the option).")] = None,
    file_path: Annotated[str | None, typer.Option(help="Generations whose file path (or name) matches a glob.")] = None,
    before: Annotated[str | None, typer.Option(help="Generations shown before this time (ISO 8601, UTC).")] = None,
    run: Annotated[
        bool | None,
        typer.Option(
            "--run/--queue", help="Walk it in this process (default on the embedded database), or leave it to a worker."
        ),
    ] = None,
) -> None:
    """Delete data and everything derived from it: events, generations, training rows, snapshot rows, exports;
    flag the adapter versions that learned from it."""
    selector = _selector(user, session, generation_id, file_path, before)
    settings = get_settings()
    with project_scope(project) as (db, found):
        request = rights.request_deletion(db, found.id, selector, trigger="cli", actor=cli_actor(), address="local")
        request_id, project_id = request.id, found.id
    if not (settings.is_embedded if run is None else run):
        console.print(f"deletion {request_id} queued; `editloop data show {request_id} --project {project}`")
        return
    state = rights.process(settings.sqlalchemy_url, request_id)
    with session_scope(settings.sqlalchemy_url) as db:
        _show(deletion.get_request(db, project_id, request_id), rights.flagged_versions(db, request_id))
    if state != "done":
        raise typer.Exit(code=1)


@data_app.command("show")
def data_show(request_id: Annotated[int, typer.Argument(help="Deletion request id.")], project: ProjectOpt) -> None:
    """A deletion request: its state, what it removed, which snapshots and versions had used the data."""
    with project_scope(project) as (db, found):
        _show(deletion.get_request(db, found.id, request_id), rights.flagged_versions(db, request_id))


@data_app.command("list")
def data_list(project: ProjectOpt) -> None:
    """The project's deletion requests, newest first."""
    table = Table("id", "state", "phase", "trigger", "by", "created", "removed")
    with project_scope(project) as (db, found):
        for r in deletion.list_requests(db, found.id):
            removed = ", ".join(f"{k} {v}" for k, v in (r.counts or {}).items())
            created = r.created_at.isoformat(timespec="seconds")
            table.add_row(str(r.id), r.state, r.phase, r.trigger, r.requested_by, created, removed)
    console.print(table)


@consent_app.command("set")
def consent_set(
    project: ProjectOpt,
    user: Annotated[str | None, typer.Option(help="A user id, as events carry it.")] = None,
    repository: Annotated[str | None, typer.Option(help="A repository, as metadata.repository carries it.")] = None,
    opt_in: Annotated[bool, typer.Option("--opt-in", help="Opt back in (default: opt out).")] = False,
) -> None:
    """Opt a user or repository out (from now on: outcome kept, no code, no training rows); the past is kept."""
    if (user is None) == (repository is None):
        raise fail("give exactly one of --user, --repository")
    kind, subject = ("user", user) if user is not None else ("repository", repository)
    assert subject is not None
    with project_scope(project) as (db, found):
        consent.set_consent(db, found.id, kind, subject, not opt_in, cli_actor())
        audited(db, found.id, "consent.set", consent.subject_digest(kind, subject), opted_out=not opt_in)
    console.print(f"{kind} {subject}: {'opted in' if opt_in else 'opted out'}")


@consent_app.command("list")
def consent_list(project: ProjectOpt) -> None:
    """Consent records of a project."""
    table = Table("kind", "subject", "opted out", "changed", "by")
    with project_scope(project) as (db, found):
        for c in consent.list_consents(db, found.id):
            changed = c.changed_at.isoformat(timespec="seconds")
            table.add_row(c.kind, c.subject, "yes" if c.opted_out else "no", changed, c.changed_by)
    console.print(table)


def audit_command(
    project: ProjectOpt,
    action: Annotated[str | None, typer.Option(help="An action (adapter.promote) or a prefix (adapter.).")] = None,
    actor: Annotated[str | None, typer.Option(help="key:ID or cli:USER.")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (UTC).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """The audit log of admin actions: who, when, what, from where. Newest first."""
    settings = get_settings()
    ready_schema(settings)
    try:
        with session_scope(settings.sqlalchemy_url) as db:
            found = audit.entries(db, get_project(db, project).id, action=action, actor=actor, since=since, limit=limit)
            rows: list[dict[str, Any]] = [
                {
                    "id": e.id,
                    "at": e.at.isoformat(),
                    "actor": e.actor,
                    "address": e.address,
                    "action": e.action,
                    "target": e.target,
                    "details": e.details,
                }
                for e in found
            ]
    except EditloopError as exc:
        raise fail(exc.detail) from None
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    table = Table("when", "who", "from", "action", "target", "details")
    for row in rows:
        table.add_row(
            row["at"][:19], row["actor"], row["address"], row["action"], row["target"] or "", json.dumps(row["details"])
        )
    console.print(table)
