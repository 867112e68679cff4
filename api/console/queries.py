"""What the console's pages show that no API route returns whole: the overview's series (from the daily rollup), the
data volume, dataset builds, live metrics of every target side by side, and metrics flattened for a table. Everything
else comes from the services themselves."""

import math
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import utcnow
from core.projects import Project
from feedback import daily
from feedback.fold import settle
from feedback.models import DatasetBuild, DatasetSnapshot, TrainingRow
from trainers import registry
from trainers.canary import BASE, versions_metrics, wilson
from trainers.config import upstream_settings
from trainers.models import ACTIVE, AdapterVersion, TrainingRun

OUTCOMES = ("accepted", "edited", "rejected", "shown")
FEEDBACK = ("accepted", "edited", "rejected")
Z95 = 1.959963984540054


def overview_series(session: Session, project_id: int, days: int = 60) -> dict[str, Any]:
    """Per day: generations by outcome; per served version and day: acceptance rate (Wilson 95%) and mean edit
    distance (normal 95%), with their n."""
    daily.refresh(session, project_id)
    first = utcnow().date() - timedelta(days=days - 1)
    rows = daily.days(session, project_id, first)
    labels = sorted({r.day for r in rows})
    index = {d: i for i, d in enumerate(labels)}
    by_outcome = {o: [0] * len(labels) for o in OUTCOMES}
    models: dict[str, dict[date, list[float]]] = {}
    total = 0
    for r in rows:
        total += r.generations
        if r.outcome in by_outcome:
            by_outcome[r.outcome][index[r.day]] += r.generations
        cell = models.setdefault(r.model or "(none)", {}).setdefault(r.day, [0, 0, 0, 0.0, 0.0])
        if r.outcome in FEEDBACK:
            cell[1] += r.generations
        if r.outcome == "accepted":
            cell[0] += r.generations
        cell[2] += r.distance_n
        cell[3] += r.distance_sum
        cell[4] += r.distance_sumsq
    versions = []
    for model, cells in sorted(models.items()):
        acceptance, distance = [], []
        for day in labels:
            accepted, with_feedback, n, s, ss = cells.get(day, [0, 0, 0, 0.0, 0.0])
            w = wilson(int(accepted), int(with_feedback))
            acceptance.append({"rate": w["rate"], "low": w["low"], "high": w["high"], "n": w["n"]})
            distance.append(_mean_interval(int(n), s, ss))
        versions.append({"model": model, "acceptance": acceptance, "distance": distance})
    return {
        "labels": [d.isoformat() for d in labels],
        "outcomes": by_outcome,
        "versions": versions,
        "generations_shown": total,
    }


def _mean_interval(n: int, total: float, squares: float) -> dict[str, Any]:
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = total / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    half = Z95 * math.sqrt(variance / n)
    return {"mean": mean, "low": max(0.0, mean - half), "high": mean + half, "n": n}


def volume(session: Session, project_id: int) -> dict[str, int]:
    def count(query: Any) -> int:
        return int(session.scalar(query) or 0)

    return {
        "training_rows": count(
            select(func.count()).where(TrainingRow.project_id == project_id, TrainingRow.active.is_(True))
        ),
        "snapshots": count(select(func.count()).where(DatasetSnapshot.project_id == project_id)),
        "versions": count(select(func.count()).where(AdapterVersion.project_id == project_id)),
        "runs": count(select(func.count()).where(TrainingRun.project_id == project_id)),
    }


def active_run(session: Session, project_id: int) -> TrainingRun | None:
    return session.scalar(
        select(TrainingRun)
        .where(TrainingRun.project_id == project_id, TrainingRun.status.in_(ACTIVE))
        .order_by(TrainingRun.id.desc())
        .limit(1)
    )


def builds(session: Session, project_id: int, limit: int = 20) -> list[DatasetBuild]:
    return list(
        session.scalars(
            select(DatasetBuild)
            .where(DatasetBuild.project_id == project_id)
            .order_by(DatasetBuild.id.desc())
            .limit(limit)
        )
    )


TARGET_VERSIONS = 10  # the newest policy versions a target table looks at, besides those an alias points at


def targets(session: Session, project_id: int, since: datetime | None) -> list[dict[str, Any]]:
    """Live metrics of each target, as `GET /v1/adapters/{ref}/metrics` gives them, over generations shown at or after
    `since`: the upstream (when the project names one or an alias points at it), the base and the newest policy
    versions. A target is listed when it served something in the window or an alias points at it; each row carries
    its aliases. Pending events are folded once, first (the caller commits)."""
    settle(session, project_id)
    pointed: dict[int, list[str]] = {}
    for alias, version_id in sorted(registry.aliases(session, project_id).items()):
        pointed.setdefault(version_id, []).append(alias)
    versions = registry.list_versions(session, project_id)
    project = session.get(Project, project_id)
    names: list[tuple[str, list[str]]] = []
    upstream = next((v for v in versions if v.kind == registry.UPSTREAM), None)
    if upstream is not None or upstream_settings(project.settings if project else None).configured:
        names.append((registry.UPSTREAM, pointed.get(upstream.id, []) if upstream is not None else []))
    names.append((BASE, []))
    policies = [v for v in versions if v.kind == "policy"]
    for i, v in enumerate(policies):
        if i < TARGET_VERSIONS or v.id in pointed:
            names.append((v.name, pointed.get(v.id, [])))
    metrics = versions_metrics(session, project_id, [name for name, _ in names], since, fold=False)
    return [{**metrics[name], "aliases": aliases} for name, aliases in names if metrics[name]["served"] or aliases]


def versions_by_id(session: Session, project_id: int) -> dict[int, str]:
    rows = session.execute(
        select(AdapterVersion.id, AdapterVersion.name).where(AdapterVersion.project_id == project_id)
    )
    return {vid: name for vid, name in rows}


def figures(metrics: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A metrics tree as (path, text) rows for a table: an estimate with an interval reads `0.312 [0.280, 0.345] n=40`,
    per-example lists and raw distances are left out."""
    out: list[tuple[str, str]] = []
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        if key in ("per_example", "distances", "curve", "live") or isinstance(value, list) and len(value) > 8:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            centre = value.get("mean", value.get("rate", value.get("difference")))
            if isinstance(centre, int | float) and ("low" in value or "high" in value):
                text = f"{_num(centre)} [{_num(value.get('low'))}, {_num(value.get('high'))}]"
                if "n" in value:
                    text += f" n={value['n']}"
                for extra in ("significant", "worse", "verdict"):
                    if extra in value:
                        text += f" {extra}: {value[extra]}"
                out.append((path, text))
            else:
                out.extend(figures(value, path + "."))
        elif isinstance(value, int | float | str | bool) or value is None:
            out.append((path, _num(value) if isinstance(value, float) else str(value)))
    return out


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)
