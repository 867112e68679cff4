"""`editloop demo`: the whole loop on the embedded default, with no server to start.

It bootstraps the tiny code model (or reuses the one a previous demo built), starts the service (collector and
gateway) on a free port, and simulates editor users over real HTTP: each asks the gateway for code, accepts what
already matches their taste, edits the rest to their taste, rejects what does not even parse, and posts those
events. Between serving rounds the loop runs as the scheduled worker would (rows -> snapshot -> reward model ->
policy -> evaluation -> promotion), in this process, followed over `GET /v1/runs/{id}`. Per round it prints the
acceptance rate, the mean edit distance and the reward model's accuracy, and writes them as JSON and as a PNG plot.

The taste is pluggable: a built-in name (`demo.tastes.TASTES`) or `module:function`, any function from code to
edited code."""

import contextlib
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.cli_common import ready_schema
from core.db import session_scope
from core.errors import InvalidInput
from core.projects import Role, create_key, create_project
from core.settings import Settings
from demo.bootstrap import BootstrapConfig
from demo.editors import Editors, Phase
from demo.tastes import load_taste
from demo.upstream import (
    CANARY,
    OWN_PRICE_PER_MTOK,
    canary_tick,
    per_target,
    rented_project,
    rented_settings,
    start_on_upstream,
    upstream_settings,
)
from trainers.gate import summary as gate_summary

# The loop the demo runs after each round: the scheduled pipeline's config, sized for a 2-core machine. The reward
# model gets more passes than its default (the demo's snapshots are small). The policy is SFT on the users' final code
# with enough steps to move greedy decoding: with edits of a few tokens, DPO (alone or with an SFT term) lowered the
# parse rate and never taught the convention (benchmarks/README.md, small_edits.py).
DEMO_PIPELINE: dict[str, Any] = {
    "policy_kind": "sft",
    "reward": {"epochs": 10, "eval_examples": 32},
    "policy": {"eval_examples": 32, "epochs": 10.0, "max_steps": 300, "learning_rate": 1e-3},
}
# The demo project's data settings: SFT on the code users accepted as it was, beside what they edited
# (`dataset.sft_accepted`), which holds the parse rate that the small tastes' acceptance is capped by
# (benchmarks/README.md, `small_edits.py`). With the gate judging edits by the region the user changed, the three
# small tastes each gained 30 points or more with it on (README.md); explicit-get gained 28 with it off.
DEMO_DATASET: dict[str, Any] = {"sft_accepted": True}


def ensure_model(
    path: Path,
    console: Console,
    config: BootstrapConfig | None = None,
    role: str = "base model",
    same_config: bool = False,
) -> Path:
    """A bootstrap output at `path`: a previous demo's, or a new one built with `config` (default: the tests' tiny
    model). With `same_config`, an earlier output built with another config is rebuilt, not reused (the demo's own
    cache: a changed recipe must not leave a stale model in place)."""
    from demo.bootstrap import TINY_MODEL, bootstrap, built_with, is_bootstrap_output

    config = config or TINY_MODEL
    if is_bootstrap_output(path) and (not same_config or built_with(path, config)):
        console.print(f"{role}: {path} (built by an earlier demo; delete it to build afresh)")
        return path
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[info]}"), console=console, transient=True) as bar:
        task = bar.add_task(f"bootstrapping the {role}", total=config.max_steps, info="corpus, tokenizer")

        def report(step: int, total: int | None, info: dict[str, Any]) -> None:
            loss = info.get("loss")
            bar.update(task, completed=step, info=f"loss {loss:.2f}" if loss is not None else "")

        meta = bootstrap(path, config, report, overwrite=True)
    console.print(f"{role}: {path} ({meta.get('steps')} pretraining steps in {meta.get('seconds')} s, built now)")
    return path


def check_upstream_model(given: Path) -> None:
    """--upstream-model names a bootstrap output, or the demo refuses to start."""
    from demo.bootstrap import is_bootstrap_output

    if not is_bootstrap_output(given):
        raise InvalidInput(f"{given}: not a bootstrap output (`editloop model bootstrap` writes one)")


def rented_model_dir(settings: Settings, given: Path | None, console: Console) -> Path:
    """--upstream's rented model: the bootstrap output given, or the demo's own (RENTED_MODEL), built on first use
    into DATA_DIR/demo-rented-model and rebuilt only if the recipe changed."""
    from demo.bootstrap import RENTED_MODEL

    if given is not None:
        check_upstream_model(given)
        return given
    return ensure_model(settings.data_dir / "demo-rented-model", console, RENTED_MODEL, "rented model", True)


def describe(model: Path) -> dict[str, Any]:
    """What a bootstrap output's metadata says about its size and training."""
    meta = json.loads((model / "editloop-bootstrap.json").read_text())
    config = meta.get("config") or {}
    described = {k: meta.get(k) for k in ("parameters", "steps", "held_out_loss", "seconds")}
    described.update({k: config.get(k) for k in ("documents", "hidden_size", "layers", "seed")})
    return {"path": str(model), **described}


def _model_line(m: dict[str, Any]) -> str:
    return f"{(m['parameters'] or 0) / 1e6:.1f}M parameters, {m['steps']} steps, held-out loss {m['held_out_loss']}"


class Service:
    """The editloop app (collector + gateway) served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        from api.app import create_app

        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="editloop-service", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def train_round(
    settings: Settings, project_id: int, admin: httpx.Client, console: Console, round_: int
) -> dict[str, Any]:
    """What the scheduled worker does, done now: build rows, cut a snapshot, run the pipeline (reward model ->
    policy -> evaluation -> promotion). The run executes here; its progress is read over the API."""
    from feedback.models import DatasetBuild
    from feedback.tasks import build_project_rows
    from trainers.runs import create_run, execute

    url = settings.sqlalchemy_url
    build_id = build_project_rows(url, project_id)
    with session_scope(url) as session:
        build = session.get(DatasetBuild, build_id) if build_id is not None else None
        build_report = dict(build.report or {}) if build is not None else {}
        run = create_run(session, project_id, "pipeline", DEMO_PIPELINE, actor="demo", trigger="demo", nudge=False)
        run_id = run.id
    outcome: dict[str, str] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(status=execute(url, run_id, settings)), name="demo-run", daemon=True
    )
    worker.start()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[info]}"), console=console, transient=True) as bar:
        task = bar.add_task(f"round {round_}: training", total=None, info="")
        while worker.is_alive():
            worker.join(timeout=0.5)
            progress = admin.get(f"/v1/runs/{run_id}").json().get("progress") or {}
            stage = progress.get("stage") or "starting"
            bar.update(
                task,
                description=f"round {round_}: {stage}",
                completed=progress.get("step") or 0,
                total=progress.get("total"),
                info=f"eta {progress['eta_s']:.0f}s" if progress.get("eta_s") else "",
            )
    run_out = admin.get(f"/v1/runs/{run_id}").json()
    if run_out["status"] != "succeeded":
        raise RuntimeError(f"run {run_id} {run_out['status']}: {run_out.get('error')}")
    metrics = run_out.get("metrics") or {}
    reward_eval = (metrics.get("reward") or {}).get("eval") or {}
    policy_eval = (metrics.get("policy") or {}).get("eval") or {}
    promotion = metrics.get("promotion") or {}
    accuracy = (reward_eval.get("reward_accuracy") or {}).get("accuracy")
    versions = admin.get("/v1/adapters").json()
    return {
        "run_id": run_id,
        "seconds": round(_seconds(run_out), 1),
        "snapshot_id": run_out.get("snapshot_id"),
        "reward_accuracy": accuracy,
        "reward_baselines": (reward_eval.get("reward_accuracy") or {}).get("baselines"),
        "implicit_reward_accuracy": (policy_eval.get("implicit_reward") or {}).get("accuracy"),
        "edit_replay": {k: v.get("mean") for k, v in (policy_eval.get("edit_replay") or {}).items()},
        "edit_region_match": {k: v.get("region_match") for k, v in (policy_eval.get("edit_region") or {}).items()},
        "promoted": bool(promotion.get("promoted")),
        "gate": promotion.get("gate"),
        "verdict": gate_summary(promotion.get("gate") or {}),
        "reason": promotion.get("reason"),
        "production": (versions.get("aliases") or {}).get("production"),
        "canary": (versions.get("aliases") or {}).get("canary"),
        "rows": build_report.get("rows"),
        "edit_pairs_dropped": build_report.get("edit_pairs_dropped"),
    }


def _seconds(run: dict[str, Any]) -> float:
    started, finished = run.get("started_at"), run.get("finished_at")
    if not started or not finished:
        return 0.0
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = report["rounds"]
    xs = [p["round"] for p in phases]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    rates = [p["acceptance_rate"] for p in phases]
    low = [p["service_metrics"].get("acceptance_rate", {}).get("low", r) for p, r in zip(phases, rates, strict=True)]
    high = [p["service_metrics"].get("acceptance_rate", {}).get("high", r) for p, r in zip(phases, rates, strict=True)]
    left.errorbar(
        xs,
        rates,
        yerr=[[max(0.0, r - lo) for r, lo in zip(rates, low, strict=True)],
              [max(0.0, hi - r) for r, hi in zip(rates, high, strict=True)]],
        marker="o",
        capsize=4,
        label="acceptance rate (95% Wilson)",
    )  # fmt: skip
    trained = [(p["round"] + 1, p["training"]["reward_accuracy"]) for p in phases if p.get("training")]
    trained = [(x, a) for x, a in trained if a is not None]
    if trained:
        left.plot([x for x, _ in trained], [a for _, a in trained], "s--", label="reward model accuracy (eval)")
    rejected = [p["rejected"] / p["requests"] if p["requests"] else 0.0 for p in phases]
    left.plot(xs, rejected, "x:", color="grey", label="rejected: does not parse")
    left.set_ylim(0, 1.05)
    left.set_xlabel("round (0: the base model)")
    left.set_xticks(xs)
    left.legend(loc="lower right")
    left.set_title(f"taste: {report['taste']}")
    right.plot(xs, [p["mean_edit_distance"] for p in phases], "o-", color="tab:red")
    right.set_ylim(bottom=0)
    right.set_xlabel("round")
    right.set_xticks(xs)
    right.set_title("mean normalized edit distance of kept code")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_targets(report: dict[str, Any], path: Path) -> None:
    """--upstream: acceptance, latency p50 and cost per accepted generation of each target, per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("acceptance", "acceptance rate"),
        ("latency_p50_ms", "latency p50 (ms)"),
        ("cost_per_accepted", "cost per accepted generation"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    targets = sorted({t for r in report["rounds"] for t in r.get("targets", {})}, key=lambda t: (t != "upstream", t))
    for ax, (field, title) in zip(axes, panels, strict=True):
        for target in targets:
            points = [(r["round"], r["targets"][target][field]) for r in report["rounds"] if target in r["targets"]]
            points = [(x, y) for x, y in points if y is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=target)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks([r["round"] for r in report["rounds"]])
        if field == "cost_per_accepted":
            ax.set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def quiet_libraries() -> None:
    """The demo draws its own progress bars: keep the libraries' tqdm bars and load reports off the terminal."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm >= 4.66 reads its defaults from TQDM_* variables
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def run_demo(
    settings: Settings,
    console: Console,
    taste: str = "pep8",
    rounds: int = 3,
    requests: int = 120,
    users: int = 4,
    max_tokens: int = 128,
    seed: int = 0,
    model_dir: Path | None = None,
    out_dir: Path | None = None,
    upstream: bool = False,
    upstream_model: Path | None = None,
) -> dict[str, Any]:
    """Run the loop and return the report (also written to OUT/demo.json and OUT/demo.png). With `upstream`, a
    second server plays the rented model the team starts on (demo/upstream.py): `upstream_model`, or by default a
    larger, longer-trained bootstrap with a generic style (`RENTED_MODEL`), built once into DATA_DIR."""
    from ml.environment import set_threads

    taste_name, taste_fn = load_taste(taste)
    quiet_libraries()
    started = time.perf_counter()
    set_threads()
    model = ensure_model(model_dir or settings.data_dir / "demo-model", console)
    out_dir = out_dir or settings.data_dir / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)

    name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"
    report: dict[str, Any] = {
        "project": name,
        "taste": taste_name,
        "base_model": str(model),
        "rounds": [],
        "pipeline": DEMO_PIPELINE,
        "dataset": DEMO_DATASET,
    }
    with contextlib.ExitStack() as stack:
        model_settings: dict[str, Any] = {"base_model": str(model.resolve()), "auto_promote": "production"}
        project_settings: dict[str, Any] = {"model": model_settings, "dataset": DEMO_DATASET}
        if upstream:
            rented_model = rented_model_dir(settings, upstream_model, console)
            report["models"] = {"rented": describe(rented_model), "base": describe(model)}
            rented = rented_settings(out_dir)
            ready_schema(rented)
            rented_project(rented, rented_model)
            rented_url = stack.enter_context(Service(rented))
            console.print(
                f"the rented model: an OpenAI-compatible server on {rented_url} ({rented_model}: "
                f"{_model_line(report['models']['rented'])}; our base: {_model_line(report['models']['base'])})"
            )
            model_settings.update(CANARY, price_per_mtok=OWN_PRICE_PER_MTOK)
            project_settings["upstream"] = upstream_settings(rented_url)
            report["upstream"] = project_settings["upstream"]
        with session_scope(settings.sqlalchemy_url) as session:
            project = create_project(session, name)
            project.settings = project_settings
            project_id = project.id
            _, ingest_key = create_key(session, project, Role.ingest)
            _, admin_key = create_key(session, project, Role.admin)
            if upstream:
                start_on_upstream(session, project_id)
        base_url = stack.enter_context(Service(settings))
        console.print(f"service on {base_url}: project [bold]{name}[/bold], taste [bold]{taste_name}[/bold]")
        names = 16 if upstream else 1
        editors = Editors(base_url, ingest_key, taste_fn, users, seed, max_tokens, names)
        admin = stack.enter_context(
            httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
        )
        production = "upstream" if upstream else None  # the editors ask for production once it serves something
        for round_ in range(rounds + 1):
            phase = Phase(round_, "production" if production else "base")
            since = datetime.now(UTC).isoformat()
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as progress:
                editors.run(phase, requests, progress)
            for served in phase.served:
                got = admin.get(f"/v1/adapters/{served}/metrics", params={"since": since})
                if got.status_code == 200:
                    phase.service[served] = got.json()
            if len(phase.service) == 1:
                phase.service = next(iter(phase.service.values()))
            entry = phase.summary()
            console.print(_phase_line(entry))
            if upstream:
                entry["targets"] = per_target(admin, phase.served, since)
                entry["canary_policy"] = canary_tick(settings, project_id)
                console.print(_targets_line(entry))
            if round_ < rounds:
                entry["training"] = train_round(settings, project_id, admin, console, round_ + 1)
                production = entry["training"]["production"]
                console.print(_training_line(entry["training"]))
            report["rounds"].append(entry)
    first, last = report["rounds"][0], report["rounds"][-1]
    report["acceptance_gain_points"] = round(100 * (last["acceptance_rate"] - first["acceptance_rate"]), 1)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "demo.json").write_text(json.dumps(report, indent=2, default=str))
    plot(report, out_dir / "demo.png")
    _table(report, console)
    if upstream:
        _targets_table(report, console)
        plot_targets(report, out_dir / "demo-targets.png")
    start = "the upstream" if upstream else "the base model"
    console.print(f"acceptance rate: {100 * first['acceptance_rate']:.0f}% with {start}, "
                  f"{100 * last['acceptance_rate']:.0f}% after {rounds} rounds "
                  f"({report['acceptance_gain_points']:+.0f} points) in {report['seconds']:.0f} s")  # fmt: skip
    console.print(f"report: {out_dir / 'demo.json'}   plot: {out_dir / 'demo.png'}")
    if upstream:
        console.print(f"per target: {out_dir / 'demo-targets.png'}")
    return report


def _phase_line(entry: dict[str, Any]) -> str:
    served = ", ".join(f"{k} x{v}" for k, v in entry["served"].items())
    distance = entry["mean_edit_distance"]
    shown = f"{distance:.3f}" if distance is not None else "-"
    return (
        f"round {entry['round']}: {entry['requests']} requests for {entry['asked']} (served {served}): "
        f"accepted {100 * entry['acceptance_rate']:.0f}%, edited {entry['edited']}, rejected {entry['rejected']}, "
        f"mean edit distance {shown}"
    )


def _training_line(training: dict[str, Any]) -> str:
    accuracy = training["reward_accuracy"]
    if training["promoted"] and training.get("canary"):
        promoted = f"{training['canary']} entered as the canary against {training['production']}"
    elif training["promoted"]:
        promoted = f"promoted {training['production']} to production"
    else:
        kept = training["production"] or "the base"
        promoted = f"not promoted ({training.get('reason') or 'no reason recorded'}); the editors stay on {kept}"
    shown = f"{accuracy:.2f}" if accuracy is not None else "-"
    verdict = "".join(f"\n    {line}" for line in (training.get("verdict") or "").splitlines())
    rows = training.get("rows") or {}
    dropped = ", ".join(f"{g} {n}" for g, n in (training.get("edit_pairs_dropped") or {}).items()) or "none"
    return (
        f"  rows: {rows.get('edit_pair', 0)} edit pairs (dropped by the gates: {dropped}), "
        f"{rows.get('choice_pair', 0)} choice pairs, {rows.get('kto', 0)} kto, {rows.get('sft', 0)} sft\n"
        f"  trained in {training['seconds']:.0f} s on snapshot {training['snapshot_id']}: reward model accuracy "
        f"{shown}, {promoted}{verdict}"
    )


def _table(report: dict[str, Any], console: Console) -> None:
    table = Table("round", "model", "acceptance", "95% CI", "edit distance", "rejected", "reward acc. after")
    for entry in report["rounds"]:
        ci = entry["service_metrics"].get("acceptance_rate") or {}
        interval = f"{ci['low']:.2f}-{ci['high']:.2f}" if ci.get("low") is not None else "-"
        distance = entry["mean_edit_distance"]
        accuracy = (entry.get("training") or {}).get("reward_accuracy")
        table.add_row(
            str(entry["round"]),
            ", ".join(entry["served"]),
            f"{100 * entry['acceptance_rate']:.0f}%",
            interval,
            f"{distance:.3f}" if distance is not None else "-",
            str(entry["rejected"]),
            f"{accuracy:.2f}" if accuracy is not None else "-",
        )
    console.print(table)


def _money(value: float | None) -> str:
    return f"{value:.3g}" if value is not None else "-"


def _targets_line(entry: dict[str, Any]) -> str:
    parts = [
        f"{t}: accepted {100 * (m['acceptance'] or 0):.0f}%, p50 {m['latency_p50_ms'] or 0:.0f} ms, "
        f"{_money(m['cost_per_accepted'])} per accepted"
        for t, m in entry["targets"].items()
    ]
    decision = entry["canary_policy"]
    return f"  per target: {'; '.join(parts)}; canary policy: {decision['action']} ({decision['reason'][:120]})"


def _targets_table(report: dict[str, Any], console: Console) -> None:
    table = Table(
        "round", "target", "served", "acceptance", "p50 ms", "p95 ms", "cost / 1k", "cost / accepted", "canary policy"
    )
    for entry in report["rounds"]:
        for target, m in (entry.get("targets") or {}).items():
            table.add_row(
                str(entry["round"]),
                target,
                str(m["served"]),
                f"{100 * m['acceptance']:.0f}%" if m["acceptance"] is not None else "-",
                f"{m['latency_p50_ms']:.0f}" if m["latency_p50_ms"] is not None else "-",
                f"{m['latency_p95_ms']:.0f}" if m["latency_p95_ms"] is not None else "-",
                _money(m["cost_per_1k"]),
                _money(m["cost_per_accepted"]),
                entry["canary_policy"]["action"],
            )
    console.print(table)
