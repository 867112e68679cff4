"""`editloop demo`: the collector on the embedded database, fed by simulated editor users over real HTTP, then
the training data the loop learns from.

Users ask for code, then accept it, reject it, or edit it to their taste (type hints, snake_case), and their
editor posts the events the way real editors do: batched or one by one, late, out of order and sometimes twice.
One user pastes a credential and one works in an excluded `.env` file, so the scrubber and the exclusions show."""

import random
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from core.db import session_scope
from core.projects import Role, create_key, create_project
from core.settings import Settings

SNIPPETS = [
    ("# add two numbers\n", "def addNumbers(a, b):\n    return a + b\n"),
    ("# mean of a list\n", "def meanValue(values):\n    return sum(values) / len(values)\n"),
    ("# greet a user\n", "def greetUser(name):\n    return 'Hello, ' + name\n"),
    ("# count words\n", "def countWords(text):\n    return len(text.split())\n"),
    ("# clamp a number\n", "def clampValue(x, lo, hi):\n    return max(lo, min(hi, x))\n"),
]
ANNOTATIONS = {
    "a": "float",
    "b": "float",
    "values": "list[float]",
    "name": "str",
    "text": "str",
    "x": "float",
    "lo": "float",
    "hi": "float",
}


def to_taste(code: str) -> str:
    """The simulated users' taste: snake_case names and type-hinted parameters."""
    header, _, body = code.partition("\n")
    header = re.sub(r"def ([a-z]+)([A-Z])(\w*)", lambda m: f"def {m[1]}_{m[2].lower()}{m[3]}", header)
    header = re.sub(r"(\w+)(?=[,)])", lambda m: f"{m[1]}: {ANNOTATIONS.get(m[1], 'object')}", header)
    return f"{header}\n{body}"


def simulate(n_users: int, per_user: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """The requests editors would send: a list of event batches, shuffled, with late and repeated sends."""
    rng = random.Random(seed)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    requests: list[list[dict[str, Any]]] = []
    for u in range(n_users):
        for i in range(per_user):
            gid = f"demo-{uuid.uuid4().hex[:12]}"
            prompt, completion = rng.choice(SNIPPETS)
            at = t0 + timedelta(seconds=60 * i + u)
            gen: dict[str, Any] = {
                "event_id": f"{gid}:shown",
                "type": "generation",
                "generation_id": gid,
                "occurred_at": at.isoformat(),
                "prompt": prompt,
                "completion": completion,
                "model": "base",
                "language": "python",
                "file_path": f"src/user{u}/mod{i}.py",
                "user": f"user-{u}",
            }
            if u == 1 and i == 0:
                gen["completion"] = completion + 'AWS_KEY = "AKIAIOSFODNN7EXAMPLE"\n'
            if u == 2 and i == 0:
                gen["file_path"] = "deploy/.env.production"
            wanted = to_taste(completion)
            roll = rng.random()
            if roll < 0.2:
                outcome = {"type": "rejected", "reason": "not what I meant"}
            elif roll < 0.35:
                outcome = {"type": "accepted"}
            else:
                outcome = {"type": "edited", "final_text": wanted}
            later = {
                "event_id": f"{gid}:{outcome['type']}",
                "generation_id": gid,
                "occurred_at": (at + timedelta(seconds=20)).isoformat(),
                **outcome,
            }
            events = [gen, later]
            if outcome["type"] == "edited":  # editors report "accepted" first, then the edit
                events.insert(
                    1,
                    {
                        "event_id": f"{gid}:accepted",
                        "type": "accepted",
                        "generation_id": gid,
                        "occurred_at": (at + timedelta(seconds=2)).isoformat(),
                    },
                )
            rng.shuffle(events)  # feedback may arrive before the generation it is about
            requests.append(events)
    rng.shuffle(requests)
    requests += rng.sample(requests, max(1, len(requests) // 10))  # retries after a lost response
    return requests


def run_demo(settings: Settings, console: Console, users: int = 8, per_user: int = 25) -> dict[str, Any]:
    from api.app import create_app

    name = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with session_scope(settings.sqlalchemy_url) as session:
        project = create_project(session, name, [".env*", "*.pem"])
        project_id = project.id
        _, ingest_key = create_key(session, project, Role.ingest)
        _, admin_key = create_key(session, project, Role.admin)

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the collector did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    console.print(f"collector on {base}, project [bold]{name}[/bold], database {settings.data_dir / 'editloop.db'}")

    totals = {"stored": 0, "duplicates": 0, "secrets": 0}
    requests = simulate(users, per_user)
    try:
        with (
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ingest_key}"}) as editor,
            Progress(console=console, transient=True) as progress,
        ):
            task = progress.add_task("editors posting feedback", total=len(requests))
            started = time.perf_counter()
            for events in requests:
                r = editor.post("/v1/events", json={"events": events})
                r.raise_for_status()
                body = r.json()
                totals["stored"] += body["stored"]
                totals["duplicates"] += body["duplicates"]
                totals["secrets"] += sum(body["secrets_redacted"].values())
                progress.advance(task)
            elapsed = time.perf_counter() - started
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
            items: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = admin.get("/v1/generations", params={"limit": 500, **({"cursor": cursor} if cursor else {})})
                page.raise_for_status()
                items += page.json()["items"]
                cursor = page.json()["next_cursor"]
                if not cursor:
                    break
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    outcomes: dict[str, int] = {}
    for g in items:
        outcomes[g["outcome"]] = outcomes.get(g["outcome"], 0) + 1
    edited = [g["edit_distance"] for g in items if g["outcome"] == "edited" and g["edit_distance"] is not None]
    summary = {
        "project": name,
        "requests": len(requests),
        "events_stored": totals["stored"],
        "duplicates_ignored": totals["duplicates"],
        "secrets_redacted": totals["secrets"],
        "generations": len(items),
        "outcomes": outcomes,
        "acceptance_rate": round(outcomes.get("accepted", 0) / max(1, len(items)), 3),
        "mean_edit_distance": round(sum(edited) / max(1, len(edited)), 3),
        "excluded": sum(1 for g in items if g["excluded"]),
        "events_per_s": round(totals["stored"] / elapsed, 1),
    }
    table = Table("what", "value", title="editloop collector demo")
    for key, value in summary.items():
        table.add_row(key, str(value))
    console.print(table)
    example = next((g for g in items if g["outcome"] == "edited" and g["edit_distance"]), None)
    if example:
        console.print("[bold]an edited generation, as the loop will learn from it[/bold]")
        console.print(
            f"[red]- model:[/red]\n{example['completion']}[green]+ user:[/green]\n{example['final_text']}"
            f"edit distance {example['edit_distance']:.3f}"
        )
    summary["dataset"] = build_dataset(settings, console, project_id)
    return summary


def build_dataset(settings: Settings, console: Console, project_id: int) -> dict[str, Any]:
    """What the worker does on its schedule, done now: build the training rows, cut a snapshot."""
    from feedback.models import DatasetBuild
    from feedback.snapshots import cut_snapshot
    from feedback.tasks import build_project_rows

    build_id = build_project_rows(settings.sqlalchemy_url, project_id)
    with session_scope(settings.sqlalchemy_url) as session:
        build = session.get(DatasetBuild, build_id)
        snapshot = cut_snapshot(session, project_id, build_id=build_id)
        report, counts, digest = dict(build.report if build else {}), snapshot.counts, snapshot.sha256
    table = Table("kind", "train", "eval", title=f"training data: snapshot {snapshot.id} ({digest[:12]})")
    for kind, split in counts.items():
        table.add_row(kind, str(split.get("train", 0)), str(split.get("eval", 0)))
    console.print(table)
    gates = {k: v for k, v in report.get("gates", {}).items() if v}
    console.print(f"quality gates dropped: {gates or 'nothing'}")
    return {"snapshot": snapshot.id, "sha256": digest, "counts": counts, "gates": report.get("gates", {})}
