from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from api.body import read_json
from api.deps import IngestKey, sessions_of, settings_of
from core.errors import InvalidInput
from core.projects import Principal
from feedback import service
from feedback.schemas import IngestResult

router = APIRouter(tags=["feedback"])


def _transient(exc: BaseException) -> bool:
    # Postgres deadlock (40P01) or serialization failure (40001); SQLite "database is locked".
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(exc, OperationalError) and (code in ("40P01", "40001") or "locked" in str(exc))


def store_batch(request: Request, key: Principal, events: list[Any]) -> IngestResult:
    """Ingest in one transaction and commit before answering: a 2xx means every stored event is committed."""
    sessions, settings = sessions_of(request), settings_of(request)

    @retry(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(5),
        wait=wait_random_exponential(0.01, 0.5),
        reraise=True,
    )
    def attempt() -> IngestResult:
        with sessions() as session:
            result = service.ingest(session, key.project_id, events, settings, key.excluded_paths)
            session.commit()
            return result

    return attempt()


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


@router.post("/v1/events", summary="Post a batch of feedback events")
async def post_events(request: Request, key: IngestKey) -> IngestResult:
    """Store events exactly once. Valid events are stored even when others in the batch are invalid; those are
    reported in `errors` by index. A batch in which every event is invalid is a 422 and stores nothing."""
    settings = settings_of(request)
    events = check_batch(await read_json(request, settings.max_request_bytes), settings.max_events_per_batch)
    return answer(await run_in_threadpool(store_batch, request, key, events))
