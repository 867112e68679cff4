"""`editloop demo --upstream`: the switch from a rented model. A second, real OpenAI-compatible server on loopback
plays the rented model (an editloop service of its own, with its own embedded database, serving as `base` behind a
key a bootstrapped model of its own: `demo.bootstrap.RENTED_MODEL`, larger and longer-trained than our base, on the
corpus's generic mix of styles); the demo's project names it as its upstream with a provider's prices, starts with
`production` = `upstream`, and its own adapters enter as canaries against it, decided by the canary policy."""

import os
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session

from core.db import session_scope
from core.projects import Role, create_key, create_project
from core.settings import Settings

KEY_ENV = "EDITLOOP_DEMO_UPSTREAM_KEY"  # the serving process's environment holds the key, as in production
# A frontier provider's list prices, per million tokens, and what serving our own small model costs.
UPSTREAM_PRICES = {"price_input_per_mtok": 3.0, "price_output_per_mtok": 15.0}
OWN_PRICE_PER_MTOK = 0.4
CANARY = {"canary_share": 0.5, "canary_policy": "promote", "canary_min_samples": 20, "auto_promote": "canary"}


def rented_settings(out_dir: Path) -> Settings:
    """The rented model's service: an embedded database of its own."""
    return Settings(data_dir=out_dir / "rented")


def rented_project(settings: Settings, model: Path) -> str:
    """The rented server's tenant, serving `model` as `base`; returns the key the demo's upstream uses."""
    with session_scope(settings.sqlalchemy_url) as session:
        project = create_project(session, f"rented-{os.getpid()}-{id(settings)}")
        project.settings = {"model": {"base_model": str(model.resolve())}}
        _, key = create_key(session, project, Role.ingest)
    os.environ[KEY_ENV] = key
    return key


def upstream_settings(url: str) -> dict[str, Any]:
    return {"url": f"{url}/v1", "model": "base", "api_key_env": KEY_ENV, **UPSTREAM_PRICES}


def start_on_upstream(session: Session, project_id: int) -> None:
    """Round 0: everything the team serves comes from the rented model."""
    from trainers import registry

    registry.promote(session, project_id, registry.UPSTREAM, actor="demo", reason="the rented model, before editloop")


def canary_tick(settings: Settings, project_id: int) -> dict[str, Any]:
    """What the scheduled canary policy does, once: promote a canary that wins on live acceptance."""
    from trainers.canary import apply_canary_policy

    with session_scope(settings.sqlalchemy_url) as session:
        decision = apply_canary_policy(session, project_id, actor="demo-canary-policy")
    return {k: decision[k] for k in ("action", "reason", "canary", "baseline")}


def per_target(admin: httpx.Client, served: dict[str, int], since: str) -> dict[str, dict[str, Any]]:
    """Live metrics of each target served in the round: acceptance, latency and cost."""
    out: dict[str, dict[str, Any]] = {}
    for target in served:
        got = admin.get(f"/v1/adapters/{target}/metrics", params={"since": since})
        if got.status_code != 200:
            continue
        m = got.json()
        out[target] = {
            "served": m["served"],
            "acceptance": m["acceptance_rate"]["rate"],
            "latency_p50_ms": m["latency_ms"]["p50"],
            "latency_p95_ms": m["latency_ms"]["p95"],
            "cost_per_1k": m["cost"]["per_1k_generations"],
            "cost_per_accepted": m["cost"]["per_accepted"],
        }
    return out
