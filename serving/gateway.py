"""The gateway: which model a request gets (an alias, a version, the base or the project's upstream; `canary` taking
its share of `production`), the backend that generates it, and the `generation` event that records it, with its
tokens, latency and cost.

A promotion is served without a restart: from the next request when it was made through this process, within
`serving_route_cache_s` otherwise (serving/route_cache.py); the backend loads the new version on first use. The event
is stored through the same path as the editors' own events (validated, scrubbed, exactly once by its event_id
`gateway:{generation_id}`), so feedback joins it the same way."""

import hashlib
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
from sqlalchemy.orm import Session

from core.errors import InvalidInput, NotFound
from core.projects import Project
from core.settings import Settings
from serving import route_cache
from serving.backend import Adapter, Backend, Params, Result, Target
from serving.cost import own_cost, upstream_cost
from serving.route_cache import RouteCache
from serving.schemas import ChatRequest, CompletionRequest, ModelCard, ModelList
from serving.upstream import Upstream
from trainers import registry
from trainers.canary import canary_share
from trainers.config import ModelSettings, UpstreamSettings, model_settings, upstream_settings
from trainers.models import AdapterVersion

BASE = "base"
UPSTREAM = registry.UPSTREAM
RECORDED_METADATA = ("file_path", "language", "session")  # request metadata that fills the generation's own fields


@dataclass(frozen=True, slots=True)
class Resolved:
    requested: str  # what the request asked for: production, canary, v3, base
    alias: str | None  # the alias that served it, if any (canary when canary took a production request)
    served: str  # the version name, `base` or `upstream`
    target: Target | None  # None: the upstream serves it
    model: ModelSettings  # the project's, for the own model's price
    upstream: UpstreamSettings  # the project's (its prices, and its fallback when it serves)

    @property
    def by_upstream(self) -> bool:
        return self.target is None


def canary_draw(user: str | None, canary: str, share: float, rng: random.Random | None = None) -> bool:
    """Whether a `production` request goes to the canary. With a user, the same answer every time for that user and
    canary version (a user sees one model, and a new canary draws afresh); without one, at random."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    if user:
        digest = hashlib.sha256(f"{user}\x00{canary}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share
    return (rng or random).random() < share


@dataclass(frozen=True, slots=True)
class Routes:
    """What a model name resolves to before the canary's draw: its version, and the canary with its share of it."""

    primary: Resolved
    canary: Resolved | None = None
    share: float = 0.0
    canary_version: str = ""  # the canary's version name: a user's draw is stable per canary version

    def pick(self, user: str | None) -> Resolved:
        if self.canary is not None and canary_draw(user, self.canary_version, self.share):
            return self.canary
        return self.primary


def _resolved(
    requested: str, alias: str | None, version: AdapterVersion, model: ModelSettings, upstream: UpstreamSettings
) -> Resolved:
    if version.kind == UPSTREAM:
        if not upstream.configured:
            raise InvalidInput(f"model: {requested} points at the upstream, which the project no longer names")
        return Resolved(requested, alias, UPSTREAM, None, model, upstream)
    if version.kind != "policy":
        raise InvalidInput(f"model: {version.name} is a {version.kind} model; only policy adapters generate")
    return Resolved(requested, alias, version.name, _target(version), model, upstream)


def _target(version: AdapterVersion) -> Target:
    lineage = (version.manifest or {}).get("lineage", {})
    adapter = Adapter(
        key=f"p{version.project_id}-{version.name}-{version.manifest_sha256[:12]}",
        name=version.name,
        path=Path(version.uri),
        manifest_sha256=version.manifest_sha256,
    )
    return Target(version.base_model, lineage.get("base_revision"), adapter)


class Gateway:
    """One per process. The backend is created on the first generation, so the collector never loads torch."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.settings = settings
        self._backend = backend
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None
        self._upstream: Upstream | None = None
        self._route_cache: RouteCache[tuple[int, str], Routes] = RouteCache(settings.serving_route_cache_s)

    async def aclose(self) -> None:
        if self._upstream is not None:
            await self._upstream.aclose()

    @property
    def upstream(self) -> Upstream:
        """The client of every project's upstream: one connection pool per process."""
        if self._upstream is None:
            self._upstream = Upstream(self.settings)
        return self._upstream

    def limiter(self) -> anyio.CapacityLimiter:
        """Generations in flight in worker threads; made in the event loop that uses it."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.serving_max_concurrent)
        return self._limiter

    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                if self.settings.serving_backend == "vllm":
                    from serving.vllm import VLLMBackend

                    self._backend = VLLMBackend(self.settings)
                else:
                    from serving.backend import InProcessBackend

                    self._backend = InProcessBackend(self.settings)
            return self._backend

    def resolve(self, session: Session, project_id: int, model: str, user: str | None) -> Resolved:
        """What serves `model` for `user`, read from the database (and remembered for `cached`)."""
        read_at = route_cache.epoch()
        routes = self._routes(session, project_id, model)
        self._route_cache.put((project_id, model), routes, read_at)
        return routes.pick(user)

    def cached(self, project_id: int, model: str, user: str | None) -> Resolved | None:
        """`resolve` without the database, when it was read within `serving_route_cache_s` and nothing that
        decides it (an alias, a version, the project's settings) has changed in this process since."""
        routes = self._route_cache.get((project_id, model))
        return routes.pick(user) if routes is not None else None

    def _routes(self, session: Session, project_id: int, model: str) -> Routes:
        project = session.get(Project, project_id)
        if project is None:
            raise NotFound(f"project {project_id} does not exist")
        settings = model_settings(project.settings)
        upstream = upstream_settings(project.settings)
        if model == UPSTREAM:
            if not upstream.configured:
                raise InvalidInput("model: `upstream` needs the project's settings upstream.url and upstream.model")
            return Routes(Resolved(model, None, UPSTREAM, None, settings, upstream))
        if model == BASE:
            if not settings.base_model:
                raise InvalidInput("model: `base` needs the project's settings.model.base_model")
            target = Target(settings.base_model, settings.base_revision, None)
            return Routes(Resolved(model, None, BASE, target, settings, upstream))
        alias: str | None = model if model in registry.ALIASES else None
        try:
            version = registry.get_version(session, project_id, model)
        except NotFound as exc:
            raise NotFound(f"model: {exc.detail}; GET /v1/models lists what can be asked for") from None
        primary = _resolved(model, alias, version, settings, upstream)
        if model == "production":
            canary = registry.alias_version(session, project_id, "canary")
            if canary is not None and canary.id != version.id:
                share = canary_share(session, project_id, canary.name, settings)
                return Routes(primary, _resolved(model, "canary", canary, settings, upstream), share, canary.name)
        return Routes(primary)

    def fallback(self, session: Session, project_id: int, resolved: Resolved, user: str | None) -> Resolved | None:
        """What serves a request the upstream failed: the project's `upstream.fallback`, if it names one of our
        own models (never the upstream again)."""
        ref = resolved.upstream.fallback
        if not ref:
            return None
        found = self.resolve(session, project_id, ref, user)
        return None if found.by_upstream else found

    def models(self, session: Session, project_id: int) -> ModelList:
        project = session.get(Project, project_id)
        settings = model_settings(project.settings if project is not None else None)
        versions = registry.list_versions(session, project_id, kind="policy")
        by_id = {v.id: v for v in versions}
        upstream = upstream_settings(project.settings if project is not None else None)
        if upstream.configured:
            by_id.update({v.id: v for v in registry.list_versions(session, project_id, kind=UPSTREAM)})
        created = int(project.created_at.timestamp()) if project else 0
        cards: list[ModelCard] = []
        for alias, version_id in sorted(registry.aliases(session, project_id).items()):
            version = by_id.get(version_id)
            if version is not None:
                cards.append(ModelCard(id=alias, created=int(version.created_at.timestamp()), root=version.name))
        cards += [ModelCard(id=v.name, created=int(v.created_at.timestamp()), root=v.name) for v in versions]
        if settings.base_model:
            cards.append(ModelCard(id=BASE, created=created, root=BASE))
        if upstream.configured:
            cards.append(ModelCard(id=UPSTREAM, created=created, owned_by="upstream", root=upstream.model))
        return ModelList(data=cards)

    def params(self, request: CompletionRequest | ChatRequest) -> Params:
        limit = self.settings.serving_max_max_tokens
        max_tokens = request.max_tokens
        if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
            max_tokens = request.max_completion_tokens
        if max_tokens is not None and max_tokens > limit:
            raise InvalidInput(f"max_tokens: {max_tokens} exceeds the limit of {limit}")
        text = request.text if isinstance(request, CompletionRequest) else None
        chat = request.chat if isinstance(request, ChatRequest) else None
        if request.metadata is not None and len(orjson.dumps(request.metadata)) > self.settings.max_metadata_bytes // 2:
            raise InvalidInput(f"metadata: exceeds {self.settings.max_metadata_bytes // 2} bytes as JSON")
        longest = max([len(text or "")] + [len(m["content"]) for m in chat or []])
        if longest > self.settings.max_text_chars:
            field = "prompt" if text is not None else "messages"
            raise InvalidInput(f"{field}: exceeds {self.settings.max_text_chars} characters")
        return Params(
            prompt=text,
            messages=chat,
            max_tokens=max_tokens or self.settings.serving_default_max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            stops=tuple(request.stops),
            seed=request.seed,
        )

    def event(
        self,
        generation_id: str,
        request: CompletionRequest | ChatRequest,
        resolved: Resolved,
        result: Result,
        latency_ms: float,
        provider_model: str | None = None,
        fallback_from: str | None = None,
    ) -> dict[str, Any]:
        """The `generation` event that records a served completion: `model` is the version that produced it (or
        `upstream`, with the provider's model name), with its tokens, latency and cost."""
        extra = request.metadata or {}
        cost: float | None
        if resolved.by_upstream:
            cost = upstream_cost(resolved.upstream, result.prompt_tokens, result.completion_tokens)
        else:
            cost = own_cost(resolved.model, result.prompt_tokens, result.completion_tokens)
        recorded: dict[str, Any] = {"cost": cost}
        if resolved.by_upstream:
            recorded["provider_model"] = provider_model or resolved.upstream.model
        if fallback_from is not None:
            recorded["fallback_from"] = fallback_from
        event: dict[str, Any] = {
            "event_id": f"gateway:{generation_id}",
            "type": "generation",
            "generation_id": generation_id,
            "occurred_at": datetime.now(UTC).isoformat(),
            "completion": result.text,
            "model": resolved.served,
            "user": request.user,
            "latency_ms": round(latency_ms, 3),
            "metadata": {
                "gateway": {
                    "requested": resolved.requested,
                    "alias": resolved.alias,
                    "version": resolved.served,
                    "backend": UPSTREAM if resolved.by_upstream else self.backend.name,
                    "finish_reason": result.finish_reason,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    **recorded,
                },
                **{k: v for k, v in extra.items() if k not in RECORDED_METADATA and k != "gateway"},
            },
        }
        if isinstance(request, CompletionRequest):
            event["prompt"] = request.text
            if request.suffix is not None:
                event["suffix"] = request.suffix
        else:
            event["messages"] = request.chat
        for key in RECORDED_METADATA:
            if isinstance(extra.get(key), str):
                event[key] = extra[key]
        return event
