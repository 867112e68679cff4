"""`editloop datasets`: build training rows, cut immutable snapshots, export them for TRL."""

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from api.cli_common import audited, cli_actor, console, fail, ready_schema
from core.db import session_scope
from core.errors import EditloopError
from core.projects import get_project
from core.settings import get_settings
from feedback.deletion import record_export
from feedback.models import DatasetBuild
from feedback.rows import build_rows
from feedback.snapshots import cut_snapshot, export_snapshot, list_snapshots, snapshot_detail

datasets_app = typer.Typer(
    help="Training datasets: build rows from feedback, cut immutable snapshots, export them for TRL.",
    no_args_is_help=True,
)
ProjectOpt = Annotated[str, typer.Option(help="Project name.")]
SnapshotArg = Annotated[int, typer.Argument(help="Snapshot id, from `datasets list`.")]


class ExportFormat(StrEnum):
    parquet = "parquet"
    jsonl = "jsonl"


def _counts_table(counts: dict[str, dict[str, int]]) -> Table:
    table = Table("kind", "train", "eval")
    for kind, by_split in counts.items():
        table.add_row(kind, str(by_split.get("train", 0)), str(by_split.get("eval", 0)))
    return table


def _build_table(build: DatasetBuild) -> Table:
    table = Table("build", "generations read", "rows added", "changed", "removed", "watermark")
    watermark = build.watermark.isoformat(timespec="seconds") if build.watermark else "-"
    table.add_row(
        str(build.id),
        str(build.generations_read),
        str(build.rows_added),
        str(build.rows_changed),
        str(build.rows_removed),
        watermark,
    )
    return table


@datasets_app.command("build")
def datasets_build(project: ProjectOpt) -> None:
    """Build training rows from new feedback, then cut a snapshot of the active rows."""

    settings = get_settings()
    ready_schema(settings)
    try:
        # Two transactions: the build's progress is kept even if cutting the snapshot fails.
        with session_scope(settings.sqlalchemy_url) as session:
            build = build_rows(session, get_project(session, project).id)
        with session_scope(settings.sqlalchemy_url) as session:
            snapshot = cut_snapshot(session, build.project_id, build_id=build.id)
    except EditloopError as exc:
        raise fail(exc.detail) from None
    console.print(_build_table(build))
    if build.report:
        console.print_json(data=build.report)
    console.print(f"snapshot [bold]{snapshot.id}[/bold]: {snapshot.row_count} rows, sha256 {snapshot.sha256}")
    console.print(_counts_table(snapshot.counts))


@datasets_app.command("list")
def datasets_list(project: ProjectOpt) -> None:
    """List a project's snapshots, newest first."""

    settings = get_settings()
    ready_schema(settings)
    table = Table("id", "created", "rows", "train", "eval", "sha256")
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            for s in list_snapshots(session, get_project(session, project).id):
                train = sum(c.get("train", 0) for c in s.counts.values())
                held = sum(c.get("eval", 0) for c in s.counts.values())
                created = s.created_at.isoformat(timespec="seconds")
                table.add_row(str(s.id), created, str(s.row_count), str(train), str(held), s.sha256[:16] + "…")
    except EditloopError as exc:
        raise fail(exc.detail) from None
    console.print(table)


@datasets_app.command("show")
def datasets_show(snapshot: SnapshotArg, project: ProjectOpt) -> None:
    """Show a snapshot: its counts, config and the build it was cut after."""

    settings = get_settings()
    ready_schema(settings)
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            detail = snapshot_detail(session, get_project(session, project).id, snapshot)
    except EditloopError as exc:
        raise fail(exc.detail) from None
    console.print(f"snapshot [bold]{detail.id}[/bold] of {project}, {detail.created_at.isoformat(timespec='seconds')}")
    console.print(f"{detail.row_count} rows, sha256 {detail.sha256}")
    console.print(_counts_table(detail.counts))
    console.print_json(
        data={"config": detail.config, "build": detail.build.model_dump(mode="json") if detail.build else None}
    )


@datasets_app.command("export")
def datasets_export(
    snapshot: SnapshotArg,
    project: ProjectOpt,
    out: Annotated[Path, typer.Option(help="Folder to write the files and manifest.json into.")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.parquet,
) -> None:
    """Write a snapshot as TRL datasets: preference, kto and sft files per split, plus manifest.json."""

    settings = get_settings()
    ready_schema(settings)
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            project_id = get_project(session, project).id
            paths = export_snapshot(session, project_id, snapshot, out, fmt.value)
            # Recorded so that a deletion can write these files again without the rows it removes.
            record_export(session, project_id, snapshot, out, fmt.value, cli_actor())
            audited(session, project_id, "dataset.export", f"snapshot:{snapshot}", format=fmt.value, path=str(out))
    except EditloopError as exc:
        raise fail(exc.detail) from None
    for path in paths:
        console.print(str(path))
    console.print(f"manifest: {out / 'manifest.json'}")
