"""`editloop train`, `editloop runs` and `editloop adapters`: training runs and the adapter registry."""

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

from api.cli_common import audited, console, err, fail, project_scope
from core.db import session_scope
from core.errors import EditloopError
from core.settings import get_settings
from trainers import gate, registry, rights, runs
from trainers.config import RUN_CONFIGS, parse_assignments
from trainers.models import TrainingRun

runs_app = typer.Typer(help="Training runs.", no_args_is_help=True)
adapters_app = typer.Typer(help="Adapter versions and the production / canary aliases.", no_args_is_help=True)
ProjectOpt = Annotated[str, typer.Option(help="Project name.")]
ME = "cli"


def train(
    project: ProjectOpt,
    kind: Annotated[str, typer.Option(help=f"What to train: {' | '.join(RUN_CONFIGS)}.")],
    snapshot: Annotated[int | None, typer.Option(help="Snapshot id; default: a new snapshot of the rows now.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Run config override KEY=VALUE (VALUE is JSON), repeatable; see --show-config."),
    ] = None,
    in_process: Annotated[
        bool | None,
        typer.Option(
            "--in-process/--queue",
            help="Train in this process, or queue it for a `gpu` worker. Default: in-process on the embedded database.",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow a queued run with a progress bar until it ends.")] = True,
    show_config: Annotated[bool, typer.Option("--show-config", help="Print the kind's config and exit.")] = False,
) -> None:
    """Train a reward model or a policy adapter (or the whole pipeline) on a dataset snapshot."""
    if kind not in RUN_CONFIGS:
        raise fail(f"--kind: {kind!r} is not one of {', '.join(RUN_CONFIGS)}")
    if show_config:
        _show_config(kind)
        return
    settings = get_settings()
    try:
        overrides = parse_assignments(set_ or [])
    except EditloopError as exc:
        raise fail(f"--set {exc.detail}") from None
    local = settings.is_embedded if in_process is None else in_process
    if not local:
        from core.queue import configure

        configure(settings)
    with project_scope(project) as (session, found):
        run = runs.create_run(session, found.id, kind, overrides, snapshot_id=snapshot, actor=ME, nudge=not local)
        run_id, project_id = run.id, found.id
    console.print(f"run {run_id} ({kind}) queued on snapshot {run.snapshot_id}")
    url = settings.sqlalchemy_url
    worker = None
    if local:
        worker = threading.Thread(target=runs.execute, args=(url, run_id, settings), daemon=True)
        worker.start()
    elif not wait:
        return
    final = _follow(url, project_id, run_id, worker)
    _print_result(url, project_id, final)
    if final.status != "succeeded":
        raise typer.Exit(code=1)


def _show_config(kind: str) -> None:
    model = RUN_CONFIGS[kind]
    table = Table("field", "default", "meaning", title=f"{kind} run config")
    for name, info in model.model_fields.items():
        table.add_row(name, json.dumps(info.get_default(call_default_factory=True)), info.description or "")
    console.print(table)


def _follow(url: str, project_id: int, run_id: int, worker: threading.Thread | None) -> TrainingRun:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(f"run {run_id}", total=None, info="queued")
        while True:
            with session_scope(url) as session:
                run = runs.get_run(session, project_id, run_id)
                session.expunge(run)
            progress = run.progress or {}
            stage = progress.get("stage") or run.status
            live = ((run.metrics or {}).get("live") or {}).get(stage) or {}
            info = "  ".join(f"{k}={v:.4g}" for k, v in live.items() if k in ("loss", "rewards/accuracies", "accuracy"))
            bar.update(
                task,
                description=f"run {run_id} {stage}",
                completed=progress.get("step") or 0,
                total=progress.get("total"),
                info=info,
            )
            if run.status not in ("queued", "running"):
                return run
            if worker is not None and not worker.is_alive() and run.status == "queued":
                return run  # claimed elsewhere? nothing more to follow here
            time.sleep(0.5)


def _print_result(url: str, project_id: int, run: TrainingRun) -> None:
    if run.status != "succeeded":
        err.print(f"[red]run {run.id} {run.status}[/red]: {run.error or ''}")
        return
    with session_scope(url) as session:
        for version_id in run.version_ids:
            from trainers.models import AdapterVersion

            version = session.get(AdapterVersion, version_id)
            if version is not None:
                console.print(f"registered {version.name} ({version.kind}, {version.method}) at {version.uri}")
                console.print(_metrics_table(version.metrics))


def _metrics_table(metrics: dict[str, Any]) -> Table:
    table = Table("metric", "value")
    train = metrics.get("train", {})
    for key in ("steps", "train_seconds", "examples_per_s", "train_loss"):
        if train.get(key) is not None:
            table.add_row(f"train.{key}", f"{train[key]:.4g}")
    ev = metrics.get("eval", {})
    for name in ("reward_accuracy", "implicit_reward"):
        if name in ev:
            r = ev[name]
            base = r.get("baselines", {})
            table.add_row(
                name,
                f"{r['accuracy']:.3f} (n={r['n']}; longer wins {base.get('longer_wins', 0):.3f},"
                f" shorter wins {base.get('shorter_wins', 0):.3f})",
            )
    for system, r in (ev.get("edit_replay") or {}).items():
        if r.get("mean") is not None:
            table.add_row(f"edit distance: {system}", f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}] n={r['n']}")
    for system, r in (ev.get("parse_rate") or {}).items():
        if r.get("rate") is not None:
            table.add_row(f"parse rate: {system}", f"{r['rate']:.3f} (n={r['n']})")
    return table


@runs_app.command("list")
def runs_list(project: ProjectOpt) -> None:
    """The project's runs, newest first."""
    table = Table("id", "kind", "status", "trigger", "snapshot", "stage", "created", "versions")
    with project_scope(project) as (session, found):
        for run in runs.list_runs(session, found.id):
            table.add_row(
                str(run.id),
                run.kind,
                run.status,
                run.trigger,
                str(run.snapshot_id),
                str((run.progress or {}).get("stage", "")),
                run.created_at.isoformat(timespec="seconds"),
                ",".join(map(str, run.version_ids or [])),
            )
    console.print(table)


@runs_app.command("show")
def runs_show(run_id: Annotated[int, typer.Argument(help="Run id.")], project: ProjectOpt) -> None:
    """A run's status, progress, config, metrics and error, as JSON."""
    from trainers.schemas import RunOut

    with project_scope(project) as (session, found):
        out = RunOut.model_validate(runs.get_run(session, found.id, run_id))
    console.print_json(out.model_dump_json())


@runs_app.command("cancel")
def runs_cancel(run_id: Annotated[int, typer.Argument(help="Run id.")], project: ProjectOpt) -> None:
    """Cancel a queued run, or stop a running one at its next step (it registers nothing)."""
    with project_scope(project) as (session, found):
        run = runs.cancel_run(session, found.id, run_id)
        status = run.status if run.status == "cancelled" else "stopping"
    console.print(f"run {run_id}: {status}")


@adapters_app.command("list")
def adapters_list(project: ProjectOpt) -> None:
    """Versions, newest first, with their aliases and headline metrics."""
    table = Table(
        "version", "kind", "method", "aliases", "snapshot", "edit distance", "parse rate", "accuracy", "deleted data"
    )
    with project_scope(project) as (session, found):
        flags = rights.flags_of(session, found.id)
        by_version: dict[int, list[str]] = {}
        for alias, version_id in registry.aliases(session, found.id).items():
            by_version.setdefault(version_id, []).append(alias)
        for v in registry.list_versions(session, found.id):
            ev = v.metrics.get("eval", {})
            replay = (ev.get("edit_replay") or {}).get("candidate") or {}
            parse = (ev.get("parse_rate") or {}).get("candidate") or {}
            acc = (ev.get("reward_accuracy") or ev.get("implicit_reward") or {}).get("accuracy")
            table.add_row(
                v.name,
                v.kind,
                v.method,
                ",".join(by_version.get(v.id, [])),
                str(v.snapshot_id),
                f"{replay['mean']:.3f}" if replay.get("mean") is not None else "-",
                f"{parse['rate']:.3f}" if parse.get("rate") is not None else "-",
                f"{acc:.3f}" if acc is not None else "-",
                ",".join(f"deletion {f.deletion_id}" for f in flags.get(v.id, [])) or "-",
            )
    console.print(table)


@adapters_app.command("show")
def adapters_show(ref: Annotated[str, typer.Argument(help="Version name (v3) or alias.")], project: ProjectOpt) -> None:
    """A version's manifest: lineage, config, metrics, checksums."""
    with project_scope(project) as (session, found):
        version = registry.get_version(session, found.id, ref)
        console.print_json(json.dumps(version.manifest))


@adapters_app.command("promote")
def adapters_promote(
    ref: Annotated[str, typer.Argument(help="Version name (v3).")],
    project: ProjectOpt,
    alias: Annotated[str, typer.Option(help="production | canary")] = "production",
    reason: Annotated[str | None, typer.Option(help="Why; recorded. Required with --force.")] = None,
    force: Annotated[bool, typer.Option(help="Promote even if the gate refuses.")] = False,
) -> None:
    """Move an alias to a version. Refused when the version is worse than production beyond noise."""
    with project_scope(project) as (session, found):
        event = registry.promote(session, found.id, ref, alias=alias, actor=ME, reason=reason, force=force)
        reasons = "; ".join(event.gate.get("reasons", []))
        audited(session, found.id, "adapter.promote", f"adapter:{ref}", alias=alias, forced=event.forced)
        summary = gate.summary(event.gate)
    console.print(f"{alias} -> {ref}" + (" (forced)" if force else "") + (f": {reasons}" if reasons else ""))
    if summary:
        console.print(summary)


@adapters_app.command("evaluate")
def adapters_evaluate(
    ref: Annotated[str, typer.Argument(help="Version name (v3).")],
    project: ProjectOpt,
) -> None:
    """Evaluate a version again, against the current production and the base, on its own eval examples (what the
    promotion gate asks for when production has moved since the version was trained). Needs the ML stack."""
    from trainers.reevaluate import evaluate_version

    with project_scope(project) as (_, found):
        project_id = found.id
    try:
        with console.status(f"evaluating {ref} (greedy generations for its eval examples)"):
            result = evaluate_version(get_settings().sqlalchemy_url, project_id, ref, ME)
    except EditloopError as exc:
        raise fail(exc.detail) from None
    against = f"{result['production']} and the base" if result["production"] else "the base"
    console.print(f"{result['version']}: evaluated against {against} on {result['examples']} eval examples")


@adapters_app.command("rollback")
def adapters_rollback(
    project: ProjectOpt,
    alias: Annotated[str, typer.Option(help="production | canary")] = "production",
    to: Annotated[str | None, typer.Option(help="Version to point at; default: the previous one.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why; recorded.")] = None,
) -> None:
    """Point an alias back at the version it held before (never gated)."""
    with project_scope(project) as (session, found):
        event = registry.rollback(session, found.id, alias=alias, actor=ME, reason=reason, to=to)
        version = registry.get_version(session, found.id, alias)
        name = version.name
        assert event is not None
        audited(session, found.id, "adapter.rollback", f"adapter:{name}", alias=alias)
    console.print(f"{alias} -> {name} (rolled back)")


@adapters_app.command("history")
def adapters_history(project: ProjectOpt, alias: Annotated[str | None, typer.Option()] = None) -> None:
    """Every promotion and rollback, with the gate's verdict: the examples it compared on (snapshot, split, n) and
    the paired differences, with their intervals, against the base and production."""
    # Reasons and verdicts are the point of this table: they wrap rather than being cut to fit the terminal.
    table = Table(
        "when",
        "alias",
        "action",
        "version",
        "from",
        "who",
        "forced",
        Column("reason", overflow="fold"),
        Column("gate", overflow="fold", min_width=30),
    )
    with project_scope(project) as (session, found):
        from trainers.models import AdapterVersion

        def name(version_id: int | None) -> str:
            v = session.get(AdapterVersion, version_id) if version_id is not None else None
            return v.name if v is not None else "-"

        for e in registry.history(session, found.id, alias):
            table.add_row(
                e.created_at.isoformat(timespec="seconds"),
                e.alias,
                e.action,
                name(e.version_id),
                name(e.previous_version_id),
                e.actor,
                "yes" if e.forced else "",
                e.reason or "",
                _gate_cell(e.gate or {}),
            )
    console.print(table)


def _gate_cell(verdict: dict[str, Any]) -> str:
    lines = []
    live = (verdict.get("live") or {}).get("tests", {}).get("acceptance_rate")
    if live and live.get("low") is not None:
        lines.append(
            f"live: acceptance {live['difference']:+.3f} [{live['low']:+.3f}, {live['high']:+.3f}], n={live['n']},"
            f" {live['verdict']}"
        )
    if "passed" not in verdict:
        return "\n".join(lines)
    lines.append(("passed" if verdict["passed"] else "refused") + ": " + "; ".join(verdict.get("reasons", [])))
    examples = verdict.get("examples")
    if examples:
        lines.append(f"examples: snapshot {examples['snapshot_id']}, {examples['split']} split, n={examples['n']}")
    summary = gate.summary(verdict)
    return "\n".join([*lines, summary] if summary else lines)


@adapters_app.command("download")
def adapters_download(
    ref: Annotated[str, typer.Argument(help="Version name or alias.")],
    project: ProjectOpt,
    out: Annotated[Path, typer.Option(help="Directory to copy the version into.")] = Path("."),
) -> None:
    """Copy a version's directory (checksums verified); it loads with `PeftModel.from_pretrained`."""
    with project_scope(project) as (session, found):
        version = registry.get_version(session, found.id, ref)
        try:
            target = registry.copy_out(version, out)
        except registry.artifacts.ChecksumMismatch as exc:
            raise fail(f"{version.name} failed its checksum check: {exc}") from None
        audited(
            session, found.id, "adapter.download", f"adapter:{version.name}", manifest_sha256=version.manifest_sha256
        )
    console.print(f"{version.name} -> {target}")


SinceOpt = Annotated[
    datetime | None, typer.Option(help="Only generations shown at or after this time (UTC), e.g. 2026-11-01T12:00:00.")
]


def _rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "-"
    return f"{r['rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}] ({r['successes']}/{r['n']})"


def _mean(r: dict[str, Any]) -> str:
    return "-" if r["mean"] is None else f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}] (n={r['n']})"


@adapters_app.command("metrics")
def adapters_metrics(
    ref: Annotated[str, typer.Argument(help="Version name (v3), alias (production, canary) or base.")],
    project: ProjectOpt,
    since: SinceOpt = None,
) -> None:
    """Live metrics of a served version from the feedback on its own generations: acceptance rate (accepted and
    never edited) and edit rate over the generations with feedback, with Wilson 95% intervals, and the mean
    normalized edit distance of its edited generations with a bootstrap 95% interval."""
    from trainers import canary

    with project_scope(project) as (session, found):
        m = canary.version_metrics(session, found.id, ref, since)
    title = ref if ref == m["model"] else f"{ref} ({m['model']})"
    table = Table("metric", "value", title=title + (f" since {m['since']:%Y-%m-%d %H:%M}" if since else ""))
    for key in ("served", "with_feedback", "accepted", "edited", "rejected"):
        table.add_row(key.replace("_", " "), str(m[key]))
    table.add_row("acceptance rate", _rate(m["acceptance_rate"]))
    table.add_row("edit rate", _rate(m["edit_rate"]))
    table.add_row("edit distance", _mean(m["edit_distance"]))
    latency, cost = m["latency_ms"], m["cost"]

    def shown(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    table.add_row("latency p50 / p95 (ms)", f"{shown(latency['p50'], '.1f')} / {shown(latency['p95'], '.1f')}")
    table.add_row("cost per 1k generations", shown(cost["per_1k_generations"], ".4f"))
    table.add_row("cost per accepted", shown(cost["per_accepted"], ".6f"))
    console.print(table)


@adapters_app.command("compare")
def adapters_compare(
    a: Annotated[str, typer.Argument(help="Version name, alias or base; verdicts are about this one.")],
    b: Annotated[str, typer.Argument(help="Version name, alias or base to compare against.")],
    project: ProjectOpt,
    since: SinceOpt = None,
    alpha: Annotated[float | None, typer.Option(help="Significance level; default: model.canary_alpha.")] = None,
    min_samples: Annotated[
        int | None, typer.Option(help="Observations each side needs; default: model.canary_min_samples.")
    ] = None,
) -> None:
    """Compare two versions on live feedback, e.g. `editloop adapters compare canary production`: acceptance and
    edit rates by a two-proportion z-test (Fisher's exact test for small counts), edit distances by a Mann-Whitney
    U test. Each row names its test, statistic and p-value; the verdict is about A. The canary policy acts on the
    acceptance rate's verdict."""
    from trainers import canary

    with project_scope(project) as (session, found):
        c = canary.compare(session, found.id, a, b, since=since, alpha=alpha, min_samples=min_samples)
    names = f"{a} ({c['a']['model']})", f"{b} ({c['b']['model']})"
    table = Table(
        "metric",
        *names,
        "difference",
        "test",
        "statistic",
        "p-value",
        "verdict",
        title=f"{names[0]} vs {names[1]}, alpha {c['alpha']}, min samples {c['min_samples']}",
    )
    for metric, t in c["tests"].items():
        side = (_rate(c["a"][metric]), _rate(c["b"][metric])) if metric != "edit_distance" else None
        a_text, b_text = side or (_mean(c["a"]["edit_distance"]), _mean(c["b"]["edit_distance"]))
        table.add_row(
            metric.replace("_", " "),
            a_text,
            b_text,
            "-" if t["difference"] is None else f"{t['difference']:+.3f}",
            t["method"],
            "-" if t["statistic"] is None else f"{t['statistic']:.4g}",
            "-" if t["p_value"] is None else f"{t['p_value']:.4g}",
            t["verdict"],
        )
    console.print(table)
    console.print(f"verdict for {a}: {c['verdict']} (acceptance rate)")


model_app = typer.Typer(help="Base models.", no_args_is_help=True)


@model_app.command("bootstrap")
def model_bootstrap(
    out: Annotated[Path, typer.Option(help="Directory to write the model and tokenizer into.")],
    seconds: Annotated[float, typer.Option(min=1, help="Pretraining time budget.")] = 120,
    documents: Annotated[int, typer.Option(min=100, help="Synthetic Python documents to train on.")] = 30_000,
    seed: Annotated[int, typer.Option(help="Seed for the corpus, the weights and the data order.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace a previous bootstrap output in --out.")] = False,
) -> None:
    """Build a small local code model: a tokenizer trained on a generated Python corpus whose style varies along
    independent axes (naming, type hints, quotes, f-strings, docstrings), and a brief pretraining so that its
    samples look like code. Point a project at it with `editloop projects set NAME model.base_model=DIR`."""
    from demo.bootstrap import BootstrapConfig, bootstrap

    config = BootstrapConfig(seconds=seconds, documents=documents, seed=seed)
    columns = (TextColumn("pretraining"), BarColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("pretraining", total=seconds, info="building the corpus and tokenizer")

        def report(step: int, total: int | None, logs: dict[str, Any]) -> None:
            loss = logs.get("loss")
            info = f"step {step}" + (f"  loss {loss:.3f}" if loss is not None else "")
            bar.update(task, completed=min(float(logs.get("seconds") or 0), seconds), info=info)

        try:
            meta = bootstrap(out, config, report, overwrite=overwrite)
        except (ValueError, FileExistsError) as exc:
            raise fail(str(exc)) from None
    loss = meta.get("final_loss") or meta.get("loss")
    console.print(f"model written to {out} ({meta.get('steps')} steps, loss {loss})")
