"""The OpenAI-compatible gateway: /v1/completions, /v1/chat/completions (streaming and not) and /v1/models.

Any OpenAI client works with `base_url=<editloop>/v1` and an editloop key as its API key. The response `id` is the
generation_id: the editor posts accepted / rejected / edited events for it to /v1/events. Resolving the model and
generating run in the threadpool; the generation is recorded through the same group commit as /v1/events, and a
non-streaming response is sent once that record has committed. A request for the project's upstream (the rented
model, serving/upstream.py) is passed on to it instead of a backend and recorded the same way; if the upstream fails
before its first byte, the project's `upstream.fallback` serves it, when one is named."""

import asyncio
import functools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
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
from core.errors import EditloopError, InvalidInput, UpstreamUnavailable
from core.projects import Principal
from serving.backend import Backend, BackendUnavailable, FinishReason, OnText, Params, Result
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
from serving.upstream import Answer as UpstreamAnswer
from serving.upstream import Stream

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


def _respond(chat: bool, generation_id: str, created: int, served: str, result: Result) -> Completion | ChatCompletion:
    if chat:
        return ChatCompletion(
            id=generation_id,
            created=created,
            model=served,
            choices=[ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)],
            usage=_usage(result),
        )
    return Completion(
        id=generation_id,
        created=created,
        model=served,
        choices=[CompletionChoice(text=result.text, finish_reason=result.finish_reason)],
        usage=_usage(result),
    )


def _result(answer: UpstreamAnswer) -> Result:
    finish: FinishReason = "length" if answer.finish_reason == "length" else "stop"
    return Result(answer.text, finish, answer.prompt_tokens, answer.completion_tokens)


async def _serve(request: Request, key: Principal, body: CompletionRequest | ChatRequest) -> Answer:
    gateway = gateway_of(request)
    params = gateway.params(body)

    def resolve() -> Resolved:
        with sessions_of(request)() as session:
            return gateway.resolve(session, key.project_id, body.model, body.user)

    cached = gateway.cached(key.project_id, body.model, body.user)
    resolved = cached if cached is not None else await run_in_threadpool(resolve)
    chat = isinstance(body, ChatRequest)
    generation_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    started = time.perf_counter()
    fallback_from: str | None = None
    if resolved.by_upstream:
        wire = body.model_dump(exclude_unset=True, exclude_none=True)
        try:
            if body.stream:
                stream = await gateway.upstream.open_stream(resolved.upstream, chat, wire)
                return StreamingResponse(
                    _stream_upstream(request, key, body, resolved, stream, generation_id, created, started),
                    media_type="text/event-stream",
                )
            answer = await gateway.upstream.call(resolved.upstream, chat, wire)
        except UpstreamUnavailable as exc:

            def fallback() -> Resolved | None:
                with sessions_of(request)() as session:
                    return gateway.fallback(session, key.project_id, resolved, body.user)

            found = await run_in_threadpool(fallback)
            if found is None:
                raise
            resolved, fallback_from = found, f"upstream: {exc.detail}"
        else:
            result = _result(answer)
            latency_ms = (time.perf_counter() - started) * 1000
            event = gateway.event(generation_id, body, resolved, result, latency_ms, answer.provider_model)
            reject_if_nothing_stored(await store_events(request.app, key, [event]))
            return _respond(chat, generation_id, created, resolved.served, result)
    try:
        backend = gateway.backend
        if body.stream:
            return StreamingResponse(
                _stream(request, key, body, backend, resolved, params, generation_id, created, started, fallback_from),
                media_type="text/event-stream",
            )
        result = await _generate(gateway, backend, resolved, params, None, threading.Event())
    except BackendUnavailable as exc:
        return _unavailable(exc)
    latency_ms = (time.perf_counter() - started) * 1000
    metrics.generated(resolved.served, result.prompt_tokens, result.completion_tokens, latency_ms / 1000)
    event = gateway.event(generation_id, body, resolved, result, latency_ms, fallback_from=fallback_from)
    reject_if_nothing_stored(await store_events(request.app, key, [event]))
    return _respond(chat, generation_id, created, resolved.served, result)


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
    assert resolved.target is not None, "the upstream is not served by a backend"
    run = functools.partial(backend.generate, resolved.target, params, on_text, cancelled)
    return await anyio.to_thread.run_sync(run, limiter=gateway.limiter())


def _sse(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data.encode() if isinstance(data, str) else orjson.dumps(data)) + b"\n\n"


def _chunker(head: dict[str, Any], chat: bool) -> Callable[..., dict[str, Any]]:
    def chunk(text: str | None, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**head, "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

    return chunk


def _head(chat: bool, generation_id: str, created: int, served: str) -> dict[str, Any]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    return {"id": generation_id, "object": kind, "created": created, "model": served}


async def _stream_upstream(
    request: Request,
    key: Principal,
    body: CompletionRequest | ChatRequest,
    resolved: Resolved,
    stream: Stream,
    generation_id: str,
    created: int,
    started: float,
) -> AsyncIterator[bytes]:
    """The upstream's stream re-sent under our generation id; recorded before the final chunk, like our own."""
    gateway = gateway_of(request)
    chat = isinstance(body, ChatRequest)
    head = _head(chat, generation_id, created, resolved.served)
    chunk = _chunker(head, chat)
    try:
        if chat:
            yield _sse(chunk(None, first=True))
        try:
            async for text in stream.texts():
                yield _sse(chunk(text))
        except EditloopError as exc:  # after the 200 and maybe some text: an error event, and never a retry
            yield _sse({"error": {"message": exc.detail, "type": exc.code, "param": None, "code": status_of(exc)}})
            return
        answer = stream.answer
        result = _result(answer)
        latency_ms = (time.perf_counter() - started) * 1000
        event = gateway.event(generation_id, body, resolved, result, latency_ms, answer.provider_model)
        reject_if_nothing_stored(await store_events(request.app, key, [event]))
        yield _sse(chunk(None if chat else "", result.finish_reason))
        if body.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(result).model_dump()})
        yield _sse("[DONE]")
    finally:
        await stream.aclose()


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
    fallback_from: str | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI sends them; the generation is recorded before the final chunk."""
    gateway = gateway_of(request)
    chat = isinstance(body, ChatRequest)
    head = _head(chat, generation_id, created, resolved.served)
    chunk = _chunker(head, chat)

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
            await store_events(
                request.app,
                key,
                [gateway.event(generation_id, body, resolved, result, latency_ms, fallback_from=fallback_from)],
            )
        )
        yield _sse(chunk(None if chat else "", result.finish_reason))
        if body.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(result).model_dump()})
        yield _sse("[DONE]")
    finally:
        cancelled.set()  # a client that went away stops the generation at its next token
