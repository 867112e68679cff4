"""Evaluating a registered version again, against the current production: what the promotion gate needs when
production has moved since the version was trained (`editloop adapters evaluate v4`). The same evaluation as at
training time (trainers.evaluate_version), on the version's own snapshot's eval examples, with the version, the base
and the current production generating on the same prompts; stored beside the version (versions never change)."""

from typing import Any

from core.db import session_scope, utcnow
from core.errors import InvalidInput
from feedback.snapshots import get_snapshot
from trainers import registry
from trainers.data import as_text, load_rows
from trainers.models import AdapterEvaluation

REPLAY_FIELDS = ("prompt", "completion", "editloop_source_key", "editloop_python")


def evaluate_version(url: str, project_id: int, ref: str, actor: str) -> dict[str, Any]:
    """Generate with `ref`, the base and the current production on `ref`'s eval examples and store the result.
    Runs with no transaction open while the models work; returns {version, production, examples, evaluation_id}."""
    from ml.environment import offline_env, set_threads
    from ml.loading import load_model, load_tokenizer
    from trainers.evaluate_version import evaluate_policy

    with session_scope(url) as session:
        version = registry.get_version(session, project_id, ref)
        if version.kind != "policy":
            raise InvalidInput(f"version: {version.name} is a {version.kind} model; only policy adapters are gated")
        if version.snapshot_id is None:
            raise InvalidInput(f"version: {version.name} has no snapshot (deleted?): nothing to evaluate it on")
        snapshot = get_snapshot(session, project_id, version.snapshot_id)
        config = (version.manifest or {}).get("config") or {}
        lineage = (version.manifest or {}).get("lineage") or {}
        limit = int(config.get("eval_examples") or 64)
        rows = load_rows(session, project_id, snapshot.id, "sft", "eval", limit=limit)
        path = registry.verified_path(version)
        production = registry.alias_version(session, project_id, "production")
        against = None
        if production is not None and production.id != version.id and production.kind != registry.UPSTREAM:
            against = (production.name, registry.verified_path(production))  # the upstream has no adapter
        name, version_id = version.name, version.id
        production_id = production.id if against is not None and production is not None else None
    if not rows:
        raise InvalidInput(f"version: {name}'s snapshot has no eval examples to evaluate on")
    offline_env()
    set_threads()
    from peft import PeftModel

    tokenizer = load_tokenizer(lineage["base_model"], lineage.get("base_revision"))
    model = PeftModel.from_pretrained(load_model(lineage["base_model"], lineage.get("base_revision")), str(path))
    evaluation = evaluate_policy(
        model,
        tokenizer,
        [],
        as_text(rows, tokenizer, REPLAY_FIELDS),
        beta=float(config.get("beta", 0.1)),
        max_new_tokens=int(config.get("eval_max_new_tokens") or 128),
        production=against,
    )
    with session_scope(url) as session:
        row = AdapterEvaluation(
            project_id=project_id,
            version_id=version_id,
            production_version_id=production_id,
            metrics={"eval": evaluation},
            created_by=actor,
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        evaluation_id = row.id
    return {
        "version": name,
        "production": against[0] if against else None,
        "examples": len(rows),
        "evaluation_id": evaluation_id,
    }
