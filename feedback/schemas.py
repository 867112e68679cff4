"""Wire types of the event contract. Each event is validated on its own so one bad event never sinks a batch."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.settings import Settings

Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Short = Annotated[str, Field(max_length=1024)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id
    generation_id: Id
    occurred_at: datetime

    @field_validator("occurred_at")
    @classmethod
    def _sane_time(cls, value: datetime, info: ValidationInfo) -> datetime:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        context = info.context or {}
        settings: Settings | None = context.get("settings")
        if settings is not None:
            if value.year < settings.min_occurred_year:
                raise ValueError(f"is before {settings.min_occurred_year}")
            now = context.get("now") or datetime.now(UTC)  # one clock reading per batch, where the caller gives it
            if value > now + timedelta(seconds=settings.max_future_skew_s):
                raise ValueError(f"is more than {settings.max_future_skew_s}s in the future")
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Annotated[str, Field(min_length=1, max_length=32)]
    content: str


class GenerationEvent(_Event):
    type: Literal["generation"]
    prompt: str | None = None
    messages: Annotated[list[Message], Field(min_length=1, max_length=1000)] | None = None
    completion: str
    model: Annotated[str, Field(min_length=1, max_length=200)]
    language: Annotated[str, Field(max_length=64)] | None = None
    file_path: Short | None = None
    prefix: str | None = None
    suffix: str | None = None
    user: Annotated[str, Field(max_length=200)] | None = None
    session: Annotated[str, Field(max_length=200)] | None = None
    latency_ms: Annotated[float, Field(ge=0, le=86_400_000)] | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> "GenerationEvent":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` (text) or `messages` (chat list)")
        return self

    @field_validator("metadata")
    @classmethod
    def _small_json(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value is None:
            return None
        raw = orjson.dumps(value)
        limit = info.context["settings"].max_metadata_bytes if info.context else None
        if limit is not None and len(raw) > limit:
            raise ValueError(f"exceeds {limit} bytes as JSON")
        if b"\\u0000" in raw:
            raise ValueError("contains a NUL character, which cannot be stored")
        return value


class AcceptedEvent(_Event):
    type: Literal["accepted"]
    accepted_text: str | None = None


class RejectedEvent(_Event):
    type: Literal["rejected"]
    reason: Annotated[str, Field(max_length=2000)] | None = None


class EditedEvent(_Event):
    type: Literal["edited"]
    final_text: str


class RatingEvent(_Event):
    type: Literal["rating"]
    score: Annotated[float, Field(ge=-1, le=1)]
    comment: Annotated[str, Field(max_length=10_000)] | None = None


Event = GenerationEvent | AcceptedEvent | RejectedEvent | EditedEvent | RatingEvent
EVENT_TYPES: dict[str, type[Event]] = {
    "generation": GenerationEvent,
    "accepted": AcceptedEvent,
    "rejected": RejectedEvent,
    "edited": EditedEvent,
    "rating": RatingEvent,
}


class EventError(BaseModel):
    index: int
    event_id: str | None = None
    field: str
    detail: str


def _loc(index: int, loc: tuple[int | str, ...]) -> str:
    path = f"events[{index}]"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _text_problem(value: Any, limit: int) -> str | None:
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character, which cannot be stored"
        if len(value) > limit:
            return f"exceeds {limit} characters"
    return None


def _text_error(event: Event, limit: int) -> tuple[tuple[int | str, ...], str] | None:
    """The first text field (in field order) that holds a NUL or is longer than the limit: where, and why."""
    for name in type(event).model_fields:
        value = getattr(event, name)
        if name == "messages" and value:
            for i, message in enumerate(value):
                for part in ("role", "content"):
                    problem = _text_problem(getattr(message, part), limit)
                    if problem:
                        return (name, i, part), problem
        elif problem := _text_problem(value, limit):
            return (name,), problem
    return None


def _texts_need_checking(raw: dict[str, Any], limit: int) -> bool:
    # JSON escapes a NUL as \u0000, and no string is longer than the JSON that holds it: for nearly every event,
    # one serialization in C answers for all of its text fields.
    try:
        document = orjson.dumps(raw)
    except TypeError:
        return True
    return len(document) > limit or b"\\u0000" in document


def parse_event(index: int, raw: Any, settings: Settings, now: datetime | None = None) -> Event | EventError:
    """Validate one raw event; return the typed event, or an error naming the field and the reason.
    `now` (default: the clock) bounds occurred_at; give one per batch."""
    if not isinstance(raw, dict):
        return EventError(index=index, field=f"events[{index}]", detail="must be a JSON object")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    model = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        detail = "required" if kind is None else f"unknown event type {kind!r}; expected one of {sorted(EVENT_TYPES)}"
        return EventError(index=index, event_id=event_id, field=f"events[{index}].type", detail=detail)
    try:
        event = model.model_validate(raw, context={"settings": settings, "now": now})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        msg = err["msg"].removeprefix("Value error, ")
        return EventError(index=index, event_id=event_id, field=_loc(index, err["loc"]), detail=msg)
    if _texts_need_checking(raw, settings.max_text_chars):
        found = _text_error(event, settings.max_text_chars)
        if found:
            return EventError(index=index, event_id=event_id, field=_loc(index, found[0]), detail=found[1])
    return event


class IngestResult(BaseModel):
    received: int = Field(description="Events in the request.")
    stored: int = Field(description="Events stored by this request (committed before the response).")
    duplicates: int = Field(description="Events already stored earlier (same event_id), changed nothing.")
    errors: list[EventError] = Field(description="Invalid events, by index; nothing of them was stored.")
    secrets_redacted: dict[str, int] = Field(
        description="Secrets replaced by placeholders in the events this request stored, by kind."
    )


class GenerationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The generation_id that events refer to.")
    outcome: Literal["pending", "shown", "accepted", "rejected", "edited"]
    prompt: str | None
    messages: list[dict[str, Any]] | None
    completion: str | None
    model: str | None
    language: str | None
    file_path: str | None
    prefix: str | None
    suffix: str | None
    user: str | None
    session: str | None
    latency_ms: float | None
    metadata: dict[str, Any] | None
    final_text: str | None = Field(description="The user's code after the interaction (edited or accepted).")
    edit_distance: float | None = Field(description="Normalized Levenshtein distance, completion -> final_text.")
    accepted_text: str | None
    reject_reason: str | None
    rating_score: float | None
    rating_comment: str | None
    excluded: bool = Field(description="The file path matched an excluded glob: no code is kept.")
    secrets_redacted: dict[str, int]
    event_count: int
    shown_at: datetime | None
    decided_at: datetime | None
    edited_at: datetime | None
    created_at: datetime
    updated_at: datetime


class GenerationPage(BaseModel):
    items: list[GenerationOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
