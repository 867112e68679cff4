"""Continue (github.com/continuedev/continue) development data, mapped onto our event contract.

Continue posts one JSON body per event to an HTTP `data:` destination of its `config.yaml`
(`DataLogger.logToOneDestination` in Continue's `core/data/log.ts`), with `Authorization: Bearer <apiKey>`:

    {"name": <event name>, "data": <the event's fields>, "schema": "0.2.0", "level": "all" | "noCode",
     "profileId": <the selected Continue profile id, may be "">}

`data` is the event after Continue's zod schema for that version and level (unknown keys stripped); the base
fields every 0.2.0 event carries are `eventName, schema, timestamp, userId, userAgent, selectedProfileId`
(`packages/config-yaml/src/schemas/data/base.ts`). Other releases of the same 0.2.0 send `createdAt` instead of
`timestamp`, and some `schemaVersion` (and `sessionId`, `platform`) in `data` instead of `schema`: both shapes are
read alike (`fixtures/continue/*_createdAt.json`). The per-event field lists are in the docstring of each
`_map_*` function below.

Ids. Resending the same body maps to the same event_ids, so our idempotency (one row per event_id) dedups it:
- `autocomplete` / `nextEditOutcome` carry Continue's `completionId`; the generation is
  `continue:autocomplete:{completionId}` / `continue:nextEdit:{completionId}`.
- `editOutcome` carries no id at all: the generation is a digest of the whole `data` object.
- `chatFeedback` carries only the chat `sessionId`: the generation (one chat turn) is a digest of
  (sessionId, prompt, completion), so a later thumbs-up/down on the same turn joins the same generation.
Event ids are `{generation_id}:{generation|accepted|rejected}`; a rating adds the vote and its time, so a
changed vote is a new event (and, being later, wins the join).

Privacy. Continue fills `userId` with the IDE's `userToken` setting, a credential rather than a pseudonym, so
we never store it: `user` is a digest of it (absent when Continue sends "").
"""

import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from core.errors import InvalidInput

SCHEMA_VERSION = "0.2.0"
_MAX_ID_CHARS = 128  # Continue's ids are UUIDs; this keeps ours under the contract's 200 characters.
_TIME_KEYS = ("timestamp", "createdAt")  # the base field's name differs between Continue releases of 0.2.0

Event = dict[str, Any]


# ── field readers: each names the field path in the error ──────────────────────────────────────────────────


def _present(data: dict[str, Any], key: str) -> bool:
    return data.get(key) is not None  # JSON null is treated as absent, like a missing key


def _req_str(data: dict[str, Any], key: str, path: str = "data") -> str:
    if not _present(data, key):
        raise InvalidInput(f"{path}.{key}: required")
    value = data[key]
    if not isinstance(value, str):
        raise InvalidInput(f"{path}.{key}: must be a string")
    return value


def _opt_str(data: dict[str, Any], key: str, path: str = "data") -> str | None:
    return _req_str(data, key, path) if _present(data, key) else None


def _req_bool(data: dict[str, Any], key: str) -> bool:
    if not _present(data, key):
        raise InvalidInput(f"data.{key}: required")
    value = data[key]
    if not isinstance(value, bool):
        raise InvalidInput(f"data.{key}: must be a boolean")
    return value


def _opt_bool(data: dict[str, Any], key: str) -> bool | None:
    return _req_bool(data, key) if _present(data, key) else None


def _opt_num(data: dict[str, Any], key: str, path: str = "data") -> float | None:
    if not _present(data, key):
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{path}.{key}: must be a number")
    return value


def _req_id(data: dict[str, Any], key: str) -> str:
    value = _req_str(data, key)
    if not value or len(value) > _MAX_ID_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidInput(f"data.{key}: must be a non-empty id of at most {_MAX_ID_CHARS} printable characters")
    return value


def _occurred_at(data: dict[str, Any]) -> str:
    """The event's time as ISO 8601 UTC. Continue's 0.2.0 base fields name it `timestamp` in some releases and
    `createdAt` (beside `schemaVersion`) in others; either is an ISO string (`new Date().toISOString()`), except that
    some versions send epoch milliseconds (`Date.now()`) for autocomplete and nextEditOutcome."""
    key = next((k for k in _TIME_KEYS if _present(data, k)), None)
    if key is None:
        raise InvalidInput("data.timestamp: required (or data.createdAt)")
    value = data[key]
    try:
        if isinstance(value, str):
            at = datetime.fromisoformat(value)
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at  # no offset: Continue means UTC ("Z")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            at = datetime.fromtimestamp(value / 1000, UTC)
        else:
            raise InvalidInput(f"data.{key}: must be an ISO 8601 string or epoch milliseconds")
    except (ValueError, OverflowError, OSError):
        raise InvalidInput(f"data.{key}: not a valid time: {str(value)[:64]!r}") from None
    return at.astimezone(UTC).isoformat()


# ── small helpers ──────────────────────────────────────────────────────────────────────────────────────────


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _user(data: dict[str, Any]) -> str | None:
    # `userId` is Continue's `ideSettings.userToken` (often ""): store a digest of it, never the value.
    user_id = _opt_str(data, "userId")
    return f"continue-user:{hashlib.sha256(user_id.encode()).hexdigest()[:24]}" if user_id else None


def _file_path(uri: str | None) -> str | None:
    """Continue sends file URIs (`file:///home/me/x.py`); store the plain path so excluded-path globs match.
    Other schemes (remote, untitled) are kept as they are."""
    if not uri:
        return None
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return uri
    path = unquote(parts.path)
    if len(path) > 2 and path[0] == "/" and path[2] == ":":  # file:///c:/x -> c:/x (Windows drive)
        path = path[1:]
    return path


def _model(data: dict[str, Any], *keys: str) -> str:
    """The first of `keys` that is a non-empty string; at least one of them must be there. Continue itself
    writes "unknown" when it has no model name, and so do we when they are all empty."""
    if not any(_present(data, key) for key in keys):
        raise InvalidInput(f"data.{keys[0]}: required")
    names = [_opt_str(data, key) for key in keys]
    return next((n for n in names if n), "unknown")


def _metadata(event_name: str, data: dict[str, Any], profile_id: str | None, **extra: Any) -> dict[str, Any]:
    meta = {
        "source": "continue",
        "continue_event": event_name,
        "model_provider": _opt_str(data, "modelProvider"),
        "user_agent": _opt_str(data, "userAgent"),
        "profile_id": profile_id or _opt_str(data, "selectedProfileId"),
        **extra,
    }
    return {k: v for k, v in meta.items() if v is not None and v != ""}


def _generation(generation_id: str, occurred_at: str, **fields: Any) -> Event:
    event = {
        "event_id": f"{generation_id}:generation",
        "type": "generation",
        "generation_id": generation_id,
        "occurred_at": occurred_at,
    }
    event.update({k: v for k, v in fields.items() if v is not None})
    return event


def _decision(generation_id: str, occurred_at: str, accepted: bool, reason: str | None = None) -> Event:
    kind = "accepted" if accepted else "rejected"
    event: Event = {
        "event_id": f"{generation_id}:{kind}",
        "type": kind,
        "generation_id": generation_id,
        "occurred_at": occurred_at,
    }
    if not accepted and reason:
        event["reason"] = reason
    return event


# ── one function per Continue event name ───────────────────────────────────────────────────────────────────


def _map_autocomplete(data: dict[str, Any], profile_id: str | None) -> list[Event]:
    """`autocomplete` 0.2.0 (schemas/data/autocomplete/v0.2.0.ts): base fields plus disable, maxPromptTokens,
    debounceDelay, maxSuffixPercentage, prefixPercentage, transform?, template?, multilineCompletions,
    slidingWindowPrefixPercentage, slidingWindowSize, useCache, onlyMyCode, useRecentlyEdited, useImports?,
    accepted?, time, prefix, suffix, prompt, completion, modelProvider, modelName, cacheHit, filepath,
    gitRepo?, completionId, uniqueId.

    Continue logs one per shown completion: `accepted: true` when taken, `false` when not taken within 10 s
    (`COUNT_COMPLETION_REJECTED_AFTER`). No `accepted` means we only learn that it was generated."""
    completion_id = _req_id(data, "completionId")
    at = _occurred_at(data)
    gid = f"continue:autocomplete:{completion_id}"
    events = [
        _generation(
            gid,
            at,
            prompt=_req_str(data, "prompt"),  # the rendered FIM prompt Continue sent to the model
            completion=_req_str(data, "completion"),
            model=_model(data, "modelName"),
            file_path=_file_path(_req_str(data, "filepath")),
            prefix=_req_str(data, "prefix"),
            suffix=_req_str(data, "suffix"),
            user=_user(data),
            latency_ms=_opt_num(data, "time"),
            metadata=_metadata(
                "autocomplete",
                data,
                profile_id,
                cache_hit=_opt_bool(data, "cacheHit"),
                git_repo=_opt_str(data, "gitRepo"),
            ),
        )
    ]
    accepted = _opt_bool(data, "accepted")
    if accepted is not None:
        events.append(_decision(gid, at, accepted, reason="not_accepted"))
    return events


def _map_next_edit_outcome(data: dict[str, Any], profile_id: str | None) -> list[Event]:
    """`nextEditOutcome` 0.2.0 (schemas/data/nextEditOutcome/v0.2.0.ts): base fields (its `timestamp` is
    epoch ms) plus elapsed, completionOptions, completionId, requestId?, gitRepo?, uniqueId, fileUri,
    workspaceDirUri, prompt, userEdits, userExcerpts, originalEditableRange, completion,
    cursorPosition {line, character}, accepted?, aborted?, modelProvider, modelName. (One Continue version
    had `finetunedOn` instead of requestId/aborted; it is not used.)

    `prompt` already holds the user's recent edits, excerpts and the editable region, and `completion` is the
    model's rewrite of that region, so there is no separate prefix/suffix. `aborted: true` means the shown
    suggestion was cancelled (the user moved on) without an accept or reject."""
    completion_id = _req_id(data, "completionId")
    at = _occurred_at(data)
    gid = f"continue:nextEdit:{completion_id}"
    cursor_line = cursor_character = None
    if _present(data, "cursorPosition"):
        cursor = data["cursorPosition"]
        if not isinstance(cursor, dict):
            raise InvalidInput("data.cursorPosition: must be an object {line, character}")
        cursor_line = _opt_num(cursor, "line", "data.cursorPosition")
        cursor_character = _opt_num(cursor, "character", "data.cursorPosition")
    events = [
        _generation(
            gid,
            at,
            prompt=_req_str(data, "prompt"),
            completion=_req_str(data, "completion"),
            model=_model(data, "modelName"),
            file_path=_file_path(_req_str(data, "fileUri")),
            user=_user(data),
            latency_ms=_opt_num(data, "elapsed"),
            metadata=_metadata(
                "nextEditOutcome",
                data,
                profile_id,
                request_id=_opt_str(data, "requestId"),
                git_repo=_opt_str(data, "gitRepo"),
                cursor_line=cursor_line,
                cursor_character=cursor_character,
            ),
        )
    ]
    accepted, aborted = _opt_bool(data, "accepted"), _opt_bool(data, "aborted")
    if accepted is not None:
        events.append(_decision(gid, at, accepted, reason="not_accepted"))
    elif aborted:
        events.append(_decision(gid, at, False, reason="aborted"))
    return events


def _map_edit_outcome(data: dict[str, Any], profile_id: str | None) -> list[Event]:
    """`editOutcome` 0.2.0 (schemas/data/editOutcome/v0.2.0.ts): base fields plus prompt, completion,
    modelName, modelTitle, modelProvider, accepted, previousCode, newCode, previousCodeLines, newCodeLines,
    lineChange, filepath. Older 0.2.0 builds send only prompt, completion, modelTitle, modelProvider,
    accepted.

    Logged once when the user accepts or rejects an edit (edit mode, or an apply in chat/agent mode). The
    event has no id, so the generation id is a digest of `data`. What was accepted or rejected is the code
    change, so `completion` is `newCode` (the code as the edit proposed it) and, as Continue gives no cursor
    prefix/suffix for an edit, `prefix` is `previousCode` (the code before the edit). Continue's own
    `completion` (the model's reply text, which in agent mode is prose around a tool call) is used only when
    an older build sends no `newCode`."""
    at = _occurred_at(data)
    gid = f"continue:edit:{_digest(data)}"
    reply = _req_str(data, "completion")
    new_code = _opt_str(data, "newCode")
    return [
        _generation(
            gid,
            at,
            prompt=_req_str(data, "prompt"),  # the user's instruction
            completion=reply if new_code is None else new_code,
            prefix=_opt_str(data, "previousCode"),
            model=_model(data, "modelName", "modelTitle"),  # older 0.2.0 builds send only modelTitle
            file_path=_file_path(_opt_str(data, "filepath")),
            user=_user(data),
            metadata=_metadata(
                "editOutcome",
                data,
                profile_id,
                model_title=_opt_str(data, "modelTitle"),
                line_change=_opt_num(data, "lineChange"),
            ),
        ),
        _decision(gid, at, _req_bool(data, "accepted"), reason="rejected"),
    ]


def _map_chat_feedback(data: dict[str, Any], profile_id: str | None) -> list[Event]:
    """`chatFeedback` 0.2.0 (schemas/data/chatFeedback/v0.2.0.ts): base fields plus prompt, completion,
    modelTitle, feedback?, sessionId.

    Sent on a thumbs up (`feedback: true`) or down (`false`) on a chat reply, once per prompt log of that
    reply (`prompt` is the full rendered prompt). There is no message id: the generation is a digest of
    (sessionId, prompt, completion), and its time is the time of the vote, the only time Continue sends."""
    session_id = _req_id(data, "sessionId")
    prompt, completion = _req_str(data, "prompt"), _req_str(data, "completion")
    at = _occurred_at(data)
    gid = f"continue:chat:{_digest([session_id, prompt, completion])}"
    events = [
        _generation(
            gid,
            at,
            prompt=prompt,
            completion=completion,
            model=_model(data, "modelTitle", "modelName"),
            user=_user(data),
            session=session_id,
            metadata=_metadata("chatFeedback", data, profile_id),
        )
    ]
    feedback = _opt_bool(data, "feedback")
    if feedback is not None:
        vote = "up" if feedback else "down"
        stamp = int(datetime.fromisoformat(at).timestamp() * 1000)
        events.append(
            {
                "event_id": f"{gid}:rating:{vote}:{stamp}",
                "type": "rating",
                "generation_id": gid,
                "occurred_at": at,
                "score": 1 if feedback else -1,
            }
        )
    return events


_MAPPERS = {
    "autocomplete": _map_autocomplete,
    "nextEditOutcome": _map_next_edit_outcome,
    "editOutcome": _map_edit_outcome,
    "chatFeedback": _map_chat_feedback,
}


def map_continue_event(body: dict) -> list[dict]:
    """Map one Continue data-destination POST body onto our events.

    Used: `autocomplete`, `nextEditOutcome`, `editOutcome`, `chatFeedback`. Every other name returns []
    without looking further than the envelope: Continue's `tokensGenerated`, `chatInteraction`,
    `editInteraction`, `nextEditWithHistory`, `toolUsage` (and 0.1.0's `quickEdit`) carry no feedback, and a
    name we do not know (a newer Continue) is ignored too rather than refused.

    Raises core.errors.InvalidInput(detail) with a field path, e.g. 'data.completionId: required', for a
    body of the wrong shape, a schema version other than 0.2.0, or `level: noCode` (which strips the code we
    need)."""
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object {name, data, schema, level, profileId}")
    name = _envelope_str(body, "name")
    data = body.get("data")
    if data is None:
        raise InvalidInput("data: required")
    if not isinstance(data, dict):
        raise InvalidInput("data: must be an object")
    schema = _envelope_str(body, "schema")
    level = body.get("level")
    if level is not None and level not in ("all", "noCode"):
        raise InvalidInput("level: must be 'all' or 'noCode'")
    profile_id = body.get("profileId")
    if profile_id is not None and not isinstance(profile_id, str):
        raise InvalidInput("profileId: must be a string")

    mapper = _MAPPERS.get(name)
    if mapper is None:
        return []
    if schema != SCHEMA_VERSION:
        raise InvalidInput(
            f"schema: unsupported version {schema[:32]!r}; set `schema: {SCHEMA_VERSION}` on "
            "this Continue data destination"
        )
    if level == "noCode":
        raise InvalidInput(
            "level: 'noCode' leaves out the prompt and code; set `level: all` on this Continue data destination"
        )
    return mapper(data, profile_id)


def _envelope_str(body: dict[str, Any], key: str) -> str:
    if body.get(key) is None:
        raise InvalidInput(f"{key}: required")
    if not isinstance(body[key], str):
        raise InvalidInput(f"{key}: must be a string")
    return body[key]
