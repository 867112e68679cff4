"""The `editloop` command line."""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from api.cli_common import audited, console, err, fail, project_scope, ready_schema
from api.cli_data import audit_command, consent_app, data_app
from api.cli_datasets import datasets_app
from api.cli_training import adapters_app, model_app, runs_app, train
from core import migrate
from core.db import session_scope
from core.errors import EditloopError
from core.projects import Role, create_key, create_project, list_keys, list_projects, revoke_key
from core.projects import set_excluded_paths as set_excluded
from core.settings import Settings, get_settings

app = typer.Typer(
    help="editloop: train your coding tool's own model on what its users do with its code.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects (tenants).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of a project.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(projects_app, name="projects")
app.add_typer(keys_app, name="keys")
app.add_typer(datasets_app, name="datasets")
app.add_typer(runs_app, name="runs")
app.add_typer(adapters_app, name="adapters")
app.add_typer(model_app, name="model")
app.command("train")(train)
app.add_typer(data_app, name="data")
app.add_typer(consent_app, name="consent")
app.command("audit")(audit_command)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations to the database named by EDITLOOP_DATABASE_URL (default: the embedded SQLite file)."""
    settings = get_settings()
    migrate.upgrade(settings.sqlalchemy_url, revision)
    console.print(f"database at revision {migrate.current_revision(settings.sqlalchemy_url)}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's revision and the code's."""
    url = get_settings().sqlalchemy_url
    console.print(f"database: {migrate.current_revision(url)}  code: {migrate.head_revision(url)}")


@db_app.command("fold")
def db_fold(
    status: Annotated[bool, typer.Option("--status", help="Only show what is queued; fold nothing.")] = False,
) -> None:
    """Fold the events that deferred ingest has queued into `generations` now (the API's fold worker does this by
    itself a moment after each ingest; this is for a server that is stopped, or before a downgrade)."""
    from core.db import get_sessionmaker, session_scope
    from feedback import fold

    settings = get_settings()
    with session_scope(settings.sqlalchemy_url) as session:
        before = fold.backlog(session)
    age = "" if before["oldest_s"] is None else f", the oldest {before['oldest_s']:.1f} s old"
    console.print(f"fold queue: {before['rows']} rows{age}")
    if status or not before["rows"]:
        return
    folded = fold.drain(get_sessionmaker(settings.sqlalchemy_url), settings.fold_batch_rows)
    console.print(f"folded {folded} generations")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (use 1 with the embedded database).")] = 1,
    background: Annotated[
        bool | None,
        typer.Option(
            "--background/--no-background",
            help="Also run a worker with the schedule (default: yes on the embedded database, no with a server).",
        ),
    ] = None,
) -> None:
    """Run the collector API (and, on the embedded default, the background worker and schedule)."""
    import subprocess
    import sys

    from api.serve import run

    settings = get_settings()
    ready_schema(settings)
    helper = None
    if settings.is_embedded if background is None else background:
        helper = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "worker", "--beat", "--queues", "default,gpu", "--concurrency", "2"]
        )
        console.print(f"background worker and schedule: pid {helper.pid}, broker {settings.celery_broker_url}")
    console.print(f"editloop collector on http://{host}:{port} (database: {_where(settings)})")
    try:
        run(host, port, workers)  # several workers: a SO_REUSEPORT socket each (api/serve.py)
    finally:
        if helper is not None:
            helper.terminate()
            helper.wait(timeout=30)


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: default (CPU work), gpu (training).")
    ] = "default",
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks at once (use 1 per GPU on the gpu queue).")] = 1,
    beat: Annotated[bool, typer.Option(help="Also run the schedule in this process (one per deployment).")] = False,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Run a Celery worker on EDITLOOP_BROKER_URL (default: a SQLite-backed queue in the data dir)."""
    from core import logs
    from core.queue import configure

    settings = get_settings()
    ready_schema(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs.setup(settings.log_format, loglevel.upper())
    argv = ["worker", "-Q", queues, "--concurrency", str(concurrency), "--loglevel", loglevel]
    argv += ["--pool", "solo" if concurrency == 1 else "prefork"]
    if beat:
        argv.append("--beat")
    configure(settings).worker_main(argv)


@app.command()
def beat(loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO") -> None:
    """Run the schedule (builds rows and checks retraining triggers every EDITLOOP_REFRESH_INTERVAL_S)."""
    from core.queue import configure

    settings = get_settings()
    ready_schema(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    configure(settings).start(["beat", "--loglevel", loglevel])


def _where(settings: Settings) -> str:
    return f"embedded {settings.data_dir / 'editloop.db'}" if settings.is_embedded else "server"


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Project name: a-z, 0-9, '_', '.', '-'.")],
    exclude: Annotated[list[str] | None, typer.Option(help="File path glob whose code is never stored.")] = None,
) -> None:
    """Create a project."""
    settings = get_settings()
    ready_schema(settings)
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            create_project(session, name, exclude or [])
    except EditloopError as exc:
        raise fail(exc.detail) from None
    console.print(f"created project [bold]{name}[/bold]")


@projects_app.command("list")
def projects_list() -> None:
    """List projects."""
    settings = get_settings()
    ready_schema(settings)
    table = Table("name", "excluded paths", "created")
    with session_scope(settings.sqlalchemy_url) as session:
        for p in list_projects(session):
            table.add_row(p.name, " ".join(p.excluded_paths or []) or "-", p.created_at.isoformat(timespec="seconds"))
    console.print(table)


@projects_app.command("exclude")
def projects_exclude(
    name: Annotated[str, typer.Argument(help="Project name.")],
    globs: Annotated[list[str], typer.Argument(help="File path globs, e.g. '.env*' '*.pem'; replaces the list.")],
) -> None:
    """Set the file path globs whose code is never stored (events keep their outcome)."""
    with project_scope(name) as (session, project):
        set_excluded(session, project, globs)
        audited(session, project.id, "settings.change", f"project:{name}", changes={"excluded_paths": globs})
    console.print(f"project {name} excludes: {' '.join(globs)}")


@projects_app.command("set")
def projects_set(
    name: Annotated[str, typer.Argument(help="Project name.")],
    assignments: Annotated[
        list[str],
        typer.Argument(
            help="SECTION.FIELD=VALUE pairs, e.g. model.base_model=./tiny-model or dataset.eval_fraction=0.2;"
            " VALUE is JSON or a bare word; `null` unsets."
        ),
    ],
) -> None:
    """Change a project's settings: model.* (base model, auto-promotion) and dataset.* (gates, split, retraining
    trigger). `projects show` lists them all."""
    import json

    from pydantic import ValidationError

    sections = _setting_sections()
    with project_scope(name) as (session, project):
        current = {section: dict((project.settings or {}).get(section, {})) for section in sections}
        for item in assignments:
            key, sep, raw = item.partition("=")
            section, _, field = key.partition(".")
            if not sep or section not in sections or field not in sections[section].model_fields:
                known = [f"{s}.{f}" for s, model in sections.items() for f in model.model_fields]
                raise fail(f"{key}: expected SECTION.FIELD=VALUE with SECTION.FIELD one of {', '.join(known)}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw  # a bare word, e.g. split_by=user or a model path
            if value is None:
                current[section].pop(field, None)
            else:
                current[section][field] = value
        for section, model in sections.items():
            try:
                model.model_validate(current[section])
            except ValidationError as exc:
                first = exc.errors()[0]
                raise fail(f"{section}.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        stored = {s: values for s, values in current.items() if values or s in (project.settings or {})}
        project.settings = {**(project.settings or {}), **stored}
        audited(session, project.id, "settings.change", f"project:{name}", changes=assignments)
    changed = [f"{s}.{k}={v!r}" for s in sections for k, v in current[s].items()]
    console.print(f"project {name}: " + (", ".join(changed) or "all defaults"))


def _setting_sections() -> dict[str, Any]:
    from feedback.config import DatasetConfig
    from trainers.config import ModelSettings, UpstreamSettings

    return {"model": ModelSettings, "dataset": DatasetConfig, "upstream": UpstreamSettings}


@projects_app.command("show")
def projects_show(name: Annotated[str, typer.Argument(help="Project name.")]) -> None:
    """Show a project's settings, defaults included."""
    with project_scope(name) as (_, project):
        table = Table("setting", "value", "", "meaning", title=f"project {name}")
        table.add_row("excluded_paths", " ".join(project.excluded_paths or []) or "-", "", "never stored")
        for section, model in _setting_sections().items():
            overrides = (project.settings or {}).get(section, {})
            config = model.model_validate(overrides)
            for field, info in model.model_fields.items():
                mark = "set" if field in overrides else "default"
                table.add_row(f"{section}.{field}", repr(getattr(config, field)), mark, info.description or "")
    console.print(table)


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="Project name.")],
    role: Annotated[Role, typer.Option(help="ingest: editors post feedback; admin: ML engineers.")] = Role.ingest,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    with project_scope(project) as (session, found):
        key, plain = create_key(session, found, role)
        audited(session, found.id, "key.create", f"key:{key.id}", role=role.value)
    err.print(f"key {key.id} ({role.value}) for project {project}; store it now, it is not shown again:")
    print(plain)


@keys_app.command("list")
def keys_list(project: Annotated[str, typer.Option(help="Project name.")]) -> None:
    """List a project's keys (their first characters only)."""
    table = Table("id", "role", "starts with", "created", "revoked")
    with project_scope(project) as (session, found):
        for k in list_keys(session, found):
            table.add_row(
                str(k.id),
                k.role,
                k.hint + "…",
                k.created_at.isoformat(timespec="seconds"),
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
            )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="Key id, from `keys list`.")],
    project: Annotated[str, typer.Option(help="Project name.")],
) -> None:
    """Revoke a key. Running servers stop accepting it within EDITLOOP_AUTH_CACHE_TTL_S seconds."""
    with project_scope(project) as (session, found):
        revoke_key(session, found, key_id)
        audited(session, found.id, "key.revoke", f"key:{key_id}")
    console.print(f"revoked key {key_id}")


@app.command()
def demo(
    taste: Annotated[
        str,
        typer.Option(
            help="The simulated users' taste: pep8, legacy, terse, typed-double (restyles), camel-defs, explicit-get,"
            " paren-return (small edits: one convention of a few tokens), or module:function (any function from code"
            " to the user's edited code)."
        ),
    ] = "pep8",
    rounds: Annotated[int, typer.Option(min=1, max=10, help="Training rounds after the base model's round.")] = 3,
    requests: Annotated[int, typer.Option(min=10, help="Gateway requests per round.")] = 120,
    users: Annotated[int, typer.Option(min=1, max=32, help="Simulated editor users, working concurrently.")] = 4,
    max_tokens: Annotated[int, typer.Option(min=16, max=512, help="Tokens per generation.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the users' requests.")] = 0,
    model: Annotated[
        Path | None,
        typer.Option(help="A bootstrap output to use as the base (default: DATA_DIR/demo-model, built if absent)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Where demo.json and demo.png go (default: DATA_DIR/demo).")] = None,
    upstream: Annotated[
        bool,
        typer.Option(
            "--upstream",
            help="The switch from a rented model: a second OpenAI-compatible server plays it, serves round 0 as"
            " production, and our adapters race it as canaries.",
        ),
    ] = False,
    upstream_model: Annotated[
        Path | None,
        typer.Option(
            help="With --upstream: a bootstrap output for the rented model (default: DATA_DIR/demo-rented-model, "
            "built if absent: a larger, longer-trained bootstrap than the base, with a generic style)."
        ),
    ] = None,
) -> None:
    """The whole loop on the embedded default, no server to start: bootstrap a tiny code model, serve it through the
    gateway to simulated editor users over HTTP, and let their accepts, edits and rejects train it for a few rounds
    (rows -> reward model -> policy -> evaluation -> promotion). Prints the acceptance rate, edit distance and reward
    accuracy per round, and writes them as JSON and a PNG plot."""
    from demo.run import check_upstream_model, run_demo
    from demo.tastes import load_taste

    try:
        load_taste(taste)
    except EditloopError as exc:
        raise typer.BadParameter(exc.detail, param_hint="--taste") from None
    if upstream_model is not None:
        try:
            check_upstream_model(upstream_model)
        except EditloopError as exc:
            raise typer.BadParameter(exc.detail, param_hint="--upstream-model") from None
    settings = get_settings()
    ready_schema(settings)
    run_demo(
        settings,
        console,
        taste=taste,
        rounds=rounds,
        requests=requests,
        users=users,
        max_tokens=max_tokens,
        seed=seed,
        model_dir=model,
        out_dir=out,
        upstream=upstream,
        upstream_model=upstream_model,
    )


if __name__ == "__main__":
    app()
