"""What a claimed run does: load its snapshot, train (a reward model, a policy, or the whole pipeline), evaluate,
register. Every kind of run goes through `train_and_register`, called by trainers.runs.execute with no transaction
open; each database touch is short."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select

from core.db import session_scope
from core.errors import Conflict, InvalidInput
from core.projects import Project
from core.settings import Settings
from feedback import texts
from feedback.models import Generation, SnapshotRow
from feedback.snapshots import get_snapshot
from feedback.syntax import is_python
from ml.environment import offline_env, set_threads
from ml.loading import load_model, load_tokenizer, resolve_quantization
from ml.trl_run import Trained
from rewards import training as reward_training
from rewards.config import RewardRunConfig
from rewards.evaluation import evaluate_reward_model
from rewards.functions import RewardModelScore, load_reward_model
from trainers import distributed, registry
from trainers.config import PipelineRunConfig, model_settings, run_config
from trainers.data import as_text, load_rows, upstream_completions
from trainers.evaluate_version import evaluate_policy
from trainers.methods import dpo, kto, online, sft
from trainers.models import AdapterVersion, TrainingRun
from trainers.run_context import Cancelled, RunContext, RunReporter, staging_for

METHODS: dict[str, Callable[..., Trained]] = {
    "dpo": dpo.train,
    "combined": dpo.train,
    "kto": kto.train,
    "sft": sft.train,
    "grpo": online.train,
    "rloo": online.train,
}
FAMILY = {"dpo": "preference", "combined": "preference", "kto": "kto", "sft": "sft", "grpo": "online", "rloo": "online"}


def train_and_register(url: str, run_id: int, settings: Settings, reporter: RunReporter) -> tuple[list[int], dict]:
    """Train, evaluate and register what the run's kind asks for; returns (the version ids registered, metrics)."""
    with session_scope(url) as session:
        row = session.get(TrainingRun, run_id)
        assert row is not None
        project = session.get(Project, row.project_id)
        assert project is not None
        model = model_settings(project.settings)
        if model.base_model is None:
            raise InvalidInput("settings.model.base_model: not set")
        if row.snapshot_id is None:
            raise InvalidInput("snapshot: the run's snapshot was deleted")
        snapshot = get_snapshot(session, row.project_id, row.snapshot_id)
        session.expunge(snapshot)
        kind, config_data = row.kind, row.config
        ctx = RunContext(
            url,
            settings,
            run_id,
            row.project_id,
            project.name,
            model.base_model,
            model.base_revision,
            model.auto_promote,
            snapshot,
            reporter,
        )
    offline_env()
    set_threads()
    config = run_config(kind, config_data)
    if isinstance(config, PipelineRunConfig):
        return _pipeline(ctx, config)
    if isinstance(config, RewardRunConfig):
        version_id, metrics = _reward(ctx, config)
        return [version_id], metrics
    version_id, metrics = _policy(ctx, kind, config)
    return [version_id], metrics


def _pipeline(ctx: RunContext, config: PipelineRunConfig) -> tuple[list[int], dict[str, Any]]:
    ids: list[int] = []
    metrics: dict[str, Any] = {}
    if config.train_reward_model:
        reward_id, metrics["reward"] = _reward(ctx, run_config("reward", config.reward), stage="reward")
        ids.append(reward_id)
    policy_id, metrics["policy"] = _policy(ctx, config.policy_kind, run_config(config.policy_kind, config.policy))
    ids.append(policy_id)
    if ctx.auto_promote != "off":
        ctx.reporter.set_stage("promotion")
        metrics["promotion"] = _auto_promote(ctx, policy_id)
    return ids, metrics


def _rows(ctx: RunContext, family: str, split: str, limit: int | None = None) -> list[dict[str, Any]]:
    with session_scope(ctx.url) as session:
        return load_rows(session, ctx.project_id, ctx.snapshot.id, family, split, limit=limit)


def _reward(ctx: RunContext, config: Any, stage: str = "reward") -> tuple[int, dict[str, Any]]:
    from transformers import set_seed

    ctx.reporter.set_stage(f"{stage}: loading")
    tokenizer = load_tokenizer(ctx.base_model, ctx.base_revision)
    train_rows = as_text(_rows(ctx, "preference", "train"), tokenizer, ("prompt", "chosen", "rejected"))
    eval_rows = as_text(
        _rows(ctx, "preference", "eval", config.eval_examples or None) if config.eval_examples else [],
        tokenizer,
        ("prompt", "chosen", "rejected"),
    )
    parent, init = _start(ctx, config, "reward")
    set_seed(config.seed)
    model = _base_model(ctx, config, "reward")
    ctx.reporter.set_stage(stage)
    ctx.reporter.restart_clock()
    work = staging_for(ctx.settings, ctx.run_id, "work")
    if distributed.launched(config):
        trained = distributed.train("reward", config, (ctx.base_model, ctx.base_revision), train_rows, work, init)
    else:
        trained = reward_training.train(config, model, tokenizer, train_rows, work, ctx.reporter, init)
    if ctx.reporter.cancelled:
        raise Cancelled("cancelled while training the reward model; nothing was registered")
    ctx.reporter.set_stage(f"{stage}: evaluation")
    evaluation = evaluate_reward_model(trained.model, tokenizer, eval_rows)
    staging = staging_for(ctx.settings, ctx.run_id, "reward")
    trained.model.save_pretrained(str(staging))
    metrics = {"train": trained.metrics, "eval": evaluation}
    return _register(ctx, staging, "reward", "reward", parent, config, metrics), metrics


def _base_model(ctx: RunContext, config: Any, head: Literal["causal", "reward"]) -> Any:
    """The base to train in this process, or None for a launched run: its processes load their own, and the adapter
    comes back on a fresh base."""
    if distributed.launched(config):
        return None
    quantization = resolve_quantization(config.quantization)
    return load_model(ctx.base_model, ctx.base_revision, head=head, quantization=quantization)


def _policy(ctx: RunContext, kind: str, config: Any) -> tuple[int, dict[str, Any]]:
    from transformers import set_seed

    ctx.reporter.set_stage(f"{kind}: loading")
    family = FAMILY[kind]
    scorer_version = _reward_version(ctx) if family == "online" else None  # fails before any loading
    tokenizer = load_tokenizer(ctx.base_model, ctx.base_revision)
    extra: dict[str, Any] = {}
    online_rl = family == "online"
    train_rows = _online_prompts(ctx, tokenizer, config.prompts) if online_rl else _rows(ctx, family, "train")
    if family == "sft":
        train_rows = as_text(train_rows, tokenizer, ("prompt", "completion", "editloop_kind"))
    elif family == "preference":
        train_rows = as_text(train_rows, tokenizer, ("prompt", "chosen", "rejected", "editloop_kind"))
    limit = config.eval_examples
    eval_pairs = (
        as_text(_rows(ctx, "preference", "eval", limit), tokenizer, ("prompt", "chosen", "rejected"))
        if limit and family != "online"  # implicit-reward accuracy is DPO's measure; online RL has the RM's score
        else []
    )
    replay = _replay_rows(ctx, tokenizer, limit) if limit else []
    parent, init = _start(ctx, config, "policy")
    production = _production_version(ctx)
    if scorer_version is not None:  # a second copy of the base, merged with the reward model's LoRA and head
        extra["reward_model"] = RewardModelScore(
            load_reward_model(ctx.base_model, ctx.base_revision, str(scorer_version[1]), tokenizer), tokenizer
        )
    set_seed(config.seed)
    model = _base_model(ctx, config, "causal")
    ctx.reporter.set_stage(kind)
    ctx.reporter.restart_clock()
    work = staging_for(ctx.settings, ctx.run_id, "work")
    if distributed.launched(config):
        trained = distributed.train(kind, config, (ctx.base_model, ctx.base_revision), train_rows, work, init)
    else:
        trained = METHODS[kind](config, model, tokenizer, train_rows, work, ctx.reporter, init, **extra)
    if scorer_version is not None:
        trained.metrics["reward_model_version"] = scorer_version[0]
    if ctx.reporter.cancelled:
        raise Cancelled(f"cancelled while training ({kind}); nothing was registered")
    ctx.reporter.set_stage(f"{kind}: evaluation")
    evaluation = evaluate_policy(
        trained.model,
        tokenizer,
        eval_pairs,
        replay,
        beta=getattr(config, "beta", 0.1),
        max_new_tokens=config.eval_max_new_tokens,
        production=production,
        score=extra.get("reward_model"),
        upstream=_upstream_completions(ctx, replay),
    )
    staging = staging_for(ctx.settings, ctx.run_id, "policy")
    trained.model.save_pretrained(str(staging))
    metrics = {"train": trained.metrics, "eval": evaluation}
    return _register(ctx, staging, "policy", kind, parent, config, metrics), metrics


def _reward_version(ctx: RunContext) -> tuple[str, Path]:
    """The project's latest reward model version (name, checksum-verified directory) that online RL scores with."""
    with session_scope(ctx.url) as session:
        version = registry.latest(session, ctx.project_id, "reward")
        if version is None:
            raise InvalidInput(
                "reward model: the project has no reward model version yet; online RL (grpo, rloo) scores with one."
                " Train it first: editloop train --kind reward (or a pipeline run with train_reward_model=true)"
            )
        return version.name, registry.verified_path(version)


def _online_prompts(ctx: RunContext, tokenizer: Any, limit: int) -> list[dict[str, Any]]:
    """The prompts online RL practises on: the project's logged generations up to the snapshot, most recent first,
    one per distinct prompt, none whose prompt is in the snapshot's eval split (the evaluation's prompts), none
    excluded. Chat prompts go through the tokenizer's chat template (skipped when it has none)."""
    held_out = select(SnapshotRow.prompt_hash).where(
        SnapshotRow.snapshot_id == ctx.snapshot.id, SnapshotRow.split == "eval"
    )
    query = (
        select(Generation.prompt_hash, Generation.language, Generation.file_path, texts.PAYLOADS[0])
        .where(
            Generation.project_id == ctx.project_id,
            Generation.excluded.is_(False),
            Generation.prompt_hash.is_not(None),
            Generation.prompt_hash.not_in(held_out),
            Generation.created_at <= ctx.snapshot.created_at,
        )
        .order_by(Generation.created_at.desc(), Generation.id.desc())
        .execution_options(yield_per=1000)
    )
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    with session_scope(ctx.url) as session:
        for prompt_hash, language, file_path, shown in session.execute(query):
            if prompt_hash in seen:
                continue
            code = texts.code(False, None, False, shown, None, None)  # excluded ones are not selected
            prompt, messages = code["prompt"], code["messages"]
            if messages:
                if getattr(tokenizer, "chat_template", None) is None:
                    continue
                prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if not prompt:
                continue
            seen.add(prompt_hash)
            out.append({"prompt": prompt, "python": is_python(language, file_path)})
            if len(out) >= limit:
                break
    return out


def _replay_rows(ctx: RunContext, tokenizer: Any, limit: int) -> list[dict[str, Any]]:
    """Held-out prompts and what the user finally kept for them (the eval split's SFT rows), with the model's
    completion that the user edited (`editloop_original`, from the same generation's edit pair) where there is one:
    the edited-region replay compares only what the user changed. Our own accepted code (`sft:kept:` rows, with
    dataset.sft_accepted) is left out: the model that wrote it replays it at distance 0, so it would measure who
    wrote the data rather than what users want."""
    rows = [r for r in _rows(ctx, "sft", "eval") if not r["editloop_source_key"].startswith("sft:kept:")][:limit]
    fields = ("prompt", "completion", "editloop_source_key", "editloop_python")
    out = as_text(rows, tokenizer, fields)
    for text, row in zip(out, rows, strict=True):  # to find the upstream's logged answer to the same prompt
        text["editloop_generation_ids"] = row["editloop_generation_ids"]
    with session_scope(ctx.url) as session:
        pairs = load_rows(session, ctx.project_id, ctx.snapshot.id, "preference", "eval", kinds=("edit_pair",))
    originals = {
        p["editloop_source_key"].removeprefix("edit:"): p["rejected"]
        for p in as_text(pairs, tokenizer, ("rejected", "editloop_source_key"))
    }
    for row in out:
        original = originals.get(row["editloop_source_key"].removeprefix("sft:"))
        if original is not None:
            row["editloop_original"] = original
    return out


def _start(ctx: RunContext, config: Any, kind: str) -> tuple[Any, str | None]:
    """(parent version, its verified directory) when continuing, else (None, None). A policy continues production;
    a reward model continues the latest reward model."""
    if config.start_from != "production":
        return None, None
    with session_scope(ctx.url) as session:
        parent = (
            registry.alias_version(session, ctx.project_id, "production")
            if kind == "policy"
            else registry.latest(session, ctx.project_id, "reward")
        )
        if parent is not None and parent.kind == registry.UPSTREAM:
            return None, None  # production is the rented model: there is no adapter of ours to continue
        if parent is None:
            what = "production adapter" if kind == "policy" else "reward model version"
            raise InvalidInput(f"config.start_from: 'production' but the project has no {what} yet")
        session.expunge(parent)
    return parent, str(registry.verified_path(parent))


def _production_version(ctx: RunContext) -> tuple[str, Path] | None:
    """Production's adapter, to replay against; None when none is production or the upstream is (see
    _upstream_completions for that comparison)."""
    with session_scope(ctx.url) as session:
        production = registry.alias_version(session, ctx.project_id, "production")
        if production is None or production.kind == registry.UPSTREAM:
            return None
        return production.name, registry.verified_path(production)


def _upstream_completions(ctx: RunContext, replay: list[dict[str, Any]]) -> dict[str, str] | None:
    if not replay:
        return None
    with session_scope(ctx.url) as session:
        return upstream_completions(session, ctx.project_id, replay) or None


def _register(ctx: RunContext, staging: Path, kind: str, method: str, parent: Any, config: Any, metrics: dict) -> int:
    """Publish and insert the version, and note it on the run, in one transaction."""
    with session_scope(ctx.url) as session:
        version = registry.register(
            session,
            ctx.settings.artifact_root,
            ctx.project_id,
            staging,
            kind=kind,
            method=method,
            run_id=ctx.run_id,
            snapshot=ctx.snapshot,
            parent=parent,
            base_model=ctx.base_model,
            base_revision=ctx.base_revision,
            config=config.model_dump(mode="json"),
            metrics=metrics,
        )
        run = session.get(TrainingRun, ctx.run_id)
        assert run is not None
        run.version_ids = [*(run.version_ids or []), version.id]
        return version.id


def _auto_promote(ctx: RunContext, version_id: int) -> dict[str, Any]:
    with session_scope(ctx.url) as session:
        version = session.get(AdapterVersion, version_id)
        assert version is not None
        try:
            event = registry.promote(
                session,
                ctx.project_id,
                version.name,
                alias=ctx.auto_promote,
                actor=f"pipeline run {ctx.run_id}",
                reason="auto_promote policy of the project",
            )
        except registry.PromotionRefused as exc:
            return {"promoted": False, "alias": ctx.auto_promote, "reason": exc.detail, "gate": exc.verdict}
        except Conflict as exc:
            return {"promoted": False, "alias": ctx.auto_promote, "reason": exc.detail}
        return {"promoted": True, "alias": ctx.auto_promote, "gate": event.gate}
