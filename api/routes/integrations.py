from fastapi import APIRouter, Request, Response

from api.body import read_json
from api.deps import IngestKey, settings_of
from api.routes.events import respond, store_events
from core.errors import InvalidInput
from feedback.integrations.continue_dev import map_continue_event
from feedback.schemas import IngestResult

router = APIRouter(tags=["integrations"])


@router.post(
    "/v1/integrations/continue", summary="Continue's HTTP data destination (schema 0.2.0)", response_model=IngestResult
)
async def post_continue(request: Request, key: IngestKey) -> Response:
    """Point a Continue `data:` destination here with an ingest key. One POST per Continue event; event names
    that carry no feedback are acknowledged and ignored."""
    body = await read_json(request, settings_of(request).max_request_bytes, storable=False)  # checked per event
    if not isinstance(body, dict):
        raise InvalidInput("body: expected a JSON object {name, data, schema, level, profileId}")
    events = map_continue_event(body)
    if not events:
        return respond(IngestResult(received=0, stored=0, duplicates=0, errors=[], secrets_redacted={}))
    return respond(await store_events(request.app, key, events))
