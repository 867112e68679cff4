"""The OpenAI-compatible gateway: /v1/completions, /v1/chat/completions (streaming and not) and /v1/models.

Any OpenAI client works with `base_url=<editloop>/v1` and an editloop key as its API key. The response `id` is the
generation_id: the editor posts accepted / rejected / edited events for it to /v1/events. Resolving the model and
generating run in the threadpool; the generation is recorded through the same group commit as /v1/events, and a
non-streaming response is sent once that record has committed."""

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.body import read_json
from api.deps import IngestKey, SessionDep, sessions_of, settings_of
from api.errors import status_of
from api.routes.events import reject_if_nothing_stored, store_events
from core.errors import EditloopError, InvalidInput
from core.projects import Principal
from serving.backend import Backend, BackendUnavailable, OnText, Params, Result
from serving.gateway import Gateway, Resolved
from serving.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelList,
    Usage,
)

router = APIRouter(tags=["gateway"])
Req = TypeVar("Req", bound=BaseModel)
Answer = Completion | ChatCompletion | StreamingResponse | JSONResponse


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway | None = getattr(request.app.state, "gateway", None)
    if gateway is None:  # created on first use: the collector alone never needs it
        gateway = request.app.state.gateway = Gateway(settings_of(request))
    return gateway


def _parse(model: type[Req], body: Any) -> Req:
    if not isinstance(body, dict):
        raise InvalidInput("body: expected a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidInput(f"{field}: {err['msg'].removeprefix('Value error, ')}") from None


def _usage(result: Result) -> Usage:
    total = result.prompt_tokens + result.completion_tokens
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens, total_tokens=total)


def _unavailable(exc: BackendUnavailable) -> JSONResponse:
    return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=502)


@router.get("/v1/models", summary="What `model` can be: the aliases, the policy versions and `base`")
def list_models(request: Request, session: SessionDep, key: IngestKey) -> ModelList:
    return gateway_of(request).models(session, key.project_id)


@router.post(
    "/v1/completions", summary="OpenAI completions; `id` is the generation_id for feedback", response_model=None
)
async def completions(request: Request, key: IngestKey) -> Answer:
    body = await read_json(request, settings_of(request).max_request_bytes)
    return await _serve(request, key, _parse(CompletionRequest, body))


@router.post("/v1/chat/completions", summary="OpenAI chat completions; `id` is the generation_id", response_model=None)
async def chat_completions(request: Request, key: IngestKey) -> Answer:
    body = await read_json(request, settings_of(request).max_request_bytes)
    return await _serve(request, key, _parse(ChatRequest, body))


async def _serve(request: Request, key: Principal, body: CompletionRequest | ChatRequest) -> Answer:
    gateway = gateway_of(request)
    params = gateway.params(body)

    def resolve() -> Resolved:
        with sessions_of(request)() as session:
            return gateway.resolve(session, key.project_id, body.model, body.user)

    resolved = await run_in_threadpool(resolve)
    chat = isinstance(body, ChatRequest)
    generation_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    started = time.perf_counter()
    try:
        backend = gateway.backend
        if body.stream:
            return StreamingResponse(
                _stream(request, key, body, backend, resolved, params, generation_id, created, started),
                media_type="text/event-stream",
            )
        result = await _generate(gateway, backend, resolved, params, None, threading.Event())
    except BackendUnavailable as exc:
        return _unavailable(exc)
    latency_ms = (time.perf_counter() - started) * 1000
    metrics.generated(resolved.served, result.prompt_tokens, result.completion_tokens, latency_ms / 1000)
    reject_if_nothing_stored(
        await store_events(request.app, key, [gateway.event(generation_id, body, resolved, result, latency_ms)])
    )
    if chat:
        return ChatCompletion(
            id=generation_id,
            created=created,
            model=resolved.served,
            choices=[ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=_usage(result),
        )
    return Completion(
        id=generation_id,
        created=created,
        model=resolved.served,
        choices=[CompletionChoice(text=result.text, finish_reason=result.finish_reason)],
        usage=_usage(result),
    )


async def _generate(
    gateway: Gateway,
    backend: Backend,
    resolved: Resolved,
    params: Params,
    on_text: OnText | None,
    cancelled: threading.Event,
) -> Result:
    """Generation runs in a worker thread under the gateway's own limit, so requests waiting for the model never
    take the threads that the collector's other requests (database sessions, key lookups) need."""
    run = functools.partial(backend.generate, resolved.target, params, on_text, cancelled)
    return await anyio.to_thread.run_sync(run, limiter=gateway.limiter())


def _sse(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data.encode() if isinstance(data, str) else orjson.dumps(data)) + b"\n\n"


async def _stream(
    request: Request,
    key: Principal,
    body: CompletionRequest | ChatRequest,
    backend: Backend,
    resolved: Resolved,
    params: Params,
    generation_id: str,
    created: int,
    started: float,
) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI sends them; the generation is recorded before the final chunk."""
    gateway = gateway_of(request)
    chat = isinstance(body, ChatRequest)
    head = {
        "id": generation_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": resolved.served,
    }

    def chunk(text: str | None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**head, "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    cancelled = threading.Event()

    def on_text(text: str) -> None:
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    work = asyncio.ensure_future(_generate(gateway, backend, resolved, params, on_text, cancelled))
    try:
        if chat:
            yield _sse(chunk(None, first=True))
        while not work.done():
            waiting = asyncio.ensure_future(pieces.get())
            await asyncio.wait({waiting, work}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                yield _sse(chunk(waiting.result()))
            else:
                waiting.cancel()
        while not pieces.empty():
            yield _sse(chunk(pieces.get_nowait()))
        try:
            result = work.result()
        except EditloopError as exc:  # after the 200: the stream ends with an error event, as OpenAI's does
            status = 502 if isinstance(exc, BackendUnavailable) else status_of(exc)
            yield _sse({"error": {"message": exc.detail, "type": exc.code, "param": None, "code": status}})
            return
        latency_ms = (time.perf_counter() - started) * 1000
        metrics.generated(resolved.served, result.prompt_tokens, result.completion_tokens, latency_ms / 1000)
        reject_if_nothing_stored(
            await store_events(request.app, key, [gateway.event(generation_id, body, resolved, result, latency_ms)])
        )
        yield _sse(chunk(None if chat else "", result.finish_reason))
        if body.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(result).model_dump()})
        yield _sse("[DONE]")
    finally:
        cancelled.set()  # a client that went away stops the generation at its next token
