from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from api.body import read_json
from api.deps import IngestKey, settings_of
from api.group_commit import GroupCommitter
from core.errors import InvalidInput
from core.projects import Principal
from feedback import service
from feedback.schemas import IngestResult

router = APIRouter(tags=["feedback"])


async def store_events(request: Request, key: Principal, events: list[Any]) -> IngestResult:
    """Validate here (per-event errors), store in a transaction shared with concurrent requests, and answer after
    it commits: a 2xx means every stored event is committed."""
    batch = service.validate(events, settings_of(request))
    committer: GroupCommitter = request.app.state.group_commit
    return await committer.submit(key, batch)


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


def answer(result: IngestResult) -> IngestResult:
    if result.errors and result.stored == 0 and result.duplicates == 0:
        first = result.errors[0]
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        raise InvalidInput(f"{first.field}: {first.detail}{more}; nothing was stored")
    return result


def respond(result: IngestResult) -> Response:
    """The answer as JSON bytes, serialized once (FastAPI would validate the returned model against the response
    model again, then encode it through jsonable_encoder)."""
    return Response(orjson.dumps(answer(result).model_dump(mode="json")), media_type="application/json")


@router.post("/v1/events", summary="Post a batch of feedback events", response_model=IngestResult)
async def post_events(request: Request, key: IngestKey) -> Response:
    """Store events exactly once. Valid events are stored even when others in the batch are invalid; those are
    reported in `errors` by index. A batch in which every event is invalid is a 422 and stores nothing."""
    settings = settings_of(request)
    events = check_batch(await read_json(request, settings.max_request_bytes), settings.max_events_per_batch)
    return respond(await store_events(request, key, events))
