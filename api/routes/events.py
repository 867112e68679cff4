"""POST /v1/events. The route below is what the API documents; a request with a Content-Length (every client but
a chunked upload) is answered by `ingest_directly` before FastAPI sees it, through the same functions.

Why a second entrance: an event costs the collector well under a millisecond of its own work, and under a load of
single-event requests FastAPI's and Starlette's layers around it (their middleware stack, routing, the dependency
solver, the Request and Response objects) took a large share of the server's CPU (py-spy under `benchmarks/ingest.py`;
benchmarks/README.md). `ingest_directly` is plain ASGI: the same key check, size limit, body checks, group commit and
error bodies, without those layers."""

from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response

from api import metrics
from api.body import read_json
from api.deps import IngestKey, authenticated, settings_of
from api.errors import status_of
from api.group_commit import GroupCommitter
from core.errors import EditloopError, InvalidInput, MalformedBody, PayloadTooLarge, Unauthenticated
from core.projects import Principal
from core.settings import Settings
from feedback import service
from feedback.schemas import IngestResult

router = APIRouter(tags=["feedback"])
PATH = "/v1/events"


async def store_events(app: FastAPI, key: Principal, events: list[Any]) -> IngestResult:
    """Validate here (per-event errors), store in a transaction shared with concurrent requests, and answer after
    it commits: a 2xx means every stored event is committed."""
    settings: Settings = app.state.settings
    batch = service.validate(events, settings)
    if batch.errors:
        metrics.ingested((_type_of(events[e.index]), "invalid") for e in batch.errors)
    committer: GroupCommitter = app.state.group_commit
    return await committer.submit(key, batch)


def _type_of(raw: Any) -> str:
    kind = raw.get("type") if isinstance(raw, dict) else None
    return kind if kind in ("generation", "accepted", "rejected", "edited", "rating") else "unknown"


def check_batch(body: Any, max_events: int) -> list[Any]:
    if not isinstance(body, dict) or "events" not in body:
        raise InvalidInput('body: expected a JSON object {"events": [...]}')
    extra = sorted(set(body) - {"events"})
    if extra:
        raise InvalidInput(f"body.{extra[0]}: unknown field")
    events = body["events"]
    if not isinstance(events, list):
        raise InvalidInput("events: must be a list")
    if len(events) > max_events:
        raise InvalidInput(f"events: {len(events)} events exceeds the limit of {max_events} per request")
    return events


def reject_if_nothing_stored(result: IngestResult) -> IngestResult:
    """The result, unless every event was invalid: then InvalidInput names the first error."""
    if result.errors and result.stored == 0 and result.duplicates == 0:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise InvalidInput(f"{first.field}: {first.detail}{more}; nothing was stored")
    return result


def encode(result: IngestResult) -> bytes:
    """The answer as JSON bytes, serialized once (FastAPI would validate the returned model against the response
    model again, then encode it through jsonable_encoder)."""
    return orjson.dumps(reject_if_nothing_stored(result).model_dump(mode="json"))


def respond(result: IngestResult) -> Response:
    return Response(encode(result), media_type="application/json")


@router.post(PATH, summary="Post a batch of feedback events", response_model=IngestResult)
async def post_events(request: Request, key: IngestKey) -> Response:
    """Store events exactly once. Valid events are stored even when others in the batch are invalid; those are
    reported in `errors` by index. A batch in which every event is invalid is a 422 and stores nothing."""
    settings = settings_of(request)
    events = check_batch(
        await read_json(request, settings.max_request_bytes, storable=False), settings.max_events_per_batch
    )
    return respond(await store_events(request.app, key, events))


def is_ingest(scope: dict[str, Any]) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST":
        return False
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return (path[len(root) :] if root and path.startswith(root) else path) == PATH


async def ingest_directly(app: FastAPI, scope: dict[str, Any], receive: Any, send: Any) -> bool:
    """Answer a POST /v1/events as `post_events` would, as plain ASGI. Returns False, having received nothing, for
    a body without a Content-Length (chunked): the route takes it and counts its bytes as they come."""
    declared = authorization = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value
        elif name == b"authorization":
            authorization = value.decode("latin-1")
    if declared is None:
        return False
    headers = [(b"content-type", b"application/json")]
    try:
        key = await authenticated(app, authorization)
        settings: Settings = app.state.settings
        limit = settings.max_request_bytes
        if not declared.isdigit():
            raise InvalidInput("content-length: not a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body: {int(declared)} bytes exceeds the limit of {limit} bytes")
        body = await _body(receive, limit)
        if body is None:
            return True  # the client went away before its body came: nothing was stored, nobody to answer
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"body: not valid JSON in UTF-8 ({exc})") from None
        events = check_batch(parsed, settings.max_events_per_batch)
        status, content = 200, encode(await store_events(app, key, events))
    except EditloopError as exc:  # the same body and status as api/errors.py gives the route
        status, content = status_of(exc), orjson.dumps({"error": exc.code, "detail": exc.detail})
        if isinstance(exc, Unauthenticated):
            headers.append((b"www-authenticate", b"Bearer"))
    headers.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
    return True


async def _body(receive: Any, limit: int) -> bytes | None:
    """The whole body (its declared length is within the limit already); None if the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # servers stop a body at its Content-Length; this holds if one does not
            raise PayloadTooLarge(f"body: more than the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
