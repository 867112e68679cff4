"""Folding events into the per-generation row.

Each group of fields has one winning event: the earliest `generation` (what was shown first), and the latest
decision, edit and rating, ordered by (occurred_at, event_id). Choosing a winner by a total order is commutative
and idempotent, so any arrival order and any number of resends converge on the same row.

The row is computed with its code (`ROW_CODE`) in memory; `generations` stores the ids of the winning events instead
(`*_event_pk`), and `code_of` gives the same code back from those events' payloads."""

import hashlib
from datetime import datetime
from typing import Any

import orjson
from rapidfuzz.distance import Levenshtein

# Code that an excluded file path keeps out of the database.
GENERATION_CODE = ("prompt", "messages", "completion", "prefix", "suffix")
ROW_CODE = (*GENERATION_CODE, "accepted_text", "final_text")
FEEDBACK_CODE = ("accepted_text", "final_text")


def empty_row(project_id: int, generation_id: str, now: datetime) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "generation_id": generation_id,
        "outcome": "pending",
        "prompt": None,
        "messages": None,
        "prompt_hash": None,
        "completion": None,
        "model": None,
        "language": None,
        "file_path": None,
        "prefix": None,
        "suffix": None,
        "user": None,
        "session": None,
        "latency_ms": None,
        "meta": None,
        "shown_at": None,
        "shown_event_id": None,
        "shown_event_pk": None,
        "decision": None,
        "accepted_text": None,
        "reject_reason": None,
        "decided_at": None,
        "decision_event_id": None,
        "decision_event_pk": None,
        "edited_at": None,
        "edited_event_id": None,
        "edited_event_pk": None,
        "rating_score": None,
        "rating_comment": None,
        "rated_at": None,
        "rating_event_id": None,
        "final_text": None,
        "edit_distance": None,
        "excluded": False,
        "secrets_redacted": {},
        "event_count": 0,
        "created_at": now,
        "updated_at": now,
    }


def prompt_hash(prompt: str | None, messages: list[dict[str, Any]] | None) -> str | None:
    if prompt is not None:
        return hashlib.sha256(prompt.encode()).hexdigest()
    if messages is not None:
        return hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return None


def _wins(ours: tuple[datetime, str], at: datetime | None, event_id: str | None, *, latest: bool) -> bool:
    if at is None or event_id is None:
        return True
    theirs = (at, event_id)
    return ours > theirs if latest else ours < theirs


def merge(
    row: dict[str, Any], kind: str, event_id: str, occurred_at: datetime, payload: dict[str, Any], pk: int | None
) -> None:
    """Fold one stored event (its type, id, time, scrubbed payload and `feedback_events.id`) into the row."""
    row["event_count"] += 1
    ours = (occurred_at, event_id)
    if kind == "generation":
        if _wins(ours, row["shown_at"], row["shown_event_id"], latest=False):
            for field in (
                "prompt",
                "messages",
                "completion",
                "model",
                "language",
                "file_path",
                "prefix",
                "suffix",
                "user",
                "session",
                "latency_ms",
            ):
                row[field] = payload.get(field)
            row["meta"] = payload.get("metadata")
            row["prompt_hash"] = prompt_hash(payload.get("prompt"), payload.get("messages"))
            row["shown_at"], row["shown_event_id"] = ours
            row["shown_event_pk"] = pk
    elif kind in ("accepted", "rejected"):
        if _wins(ours, row["decided_at"], row["decision_event_id"], latest=True):
            row["decision"] = kind
            row["accepted_text"] = payload.get("accepted_text")
            row["reject_reason"] = payload.get("reason")
            row["decided_at"], row["decision_event_id"] = ours
            row["decision_event_pk"] = pk
    elif kind == "edited":
        if _wins(ours, row["edited_at"], row["edited_event_id"], latest=True):
            row["final_text"] = payload.get("final_text")
            row["edited_at"], row["edited_event_id"] = ours
            row["edited_event_pk"] = pk
    elif kind == "rating":
        if _wins(ours, row["rated_at"], row["rating_event_id"], latest=True):
            row["rating_score"] = payload.get("score")
            row["rating_comment"] = payload.get("comment")
            row["rated_at"], row["rating_event_id"] = ours
    else:
        raise ValueError(f"unknown event type {kind!r}")


def derive(row: dict[str, Any]) -> None:
    """Recompute the fields that follow from the winners: outcome, final text, edit distance."""
    if row["excluded"]:
        for field in ROW_CODE:
            row[field] = None
        row["prompt_hash"] = None
    if row["edited_event_id"] is not None:
        row["outcome"] = "edited"  # final_text is the edit's text, set by merge()
    elif row["decision"] is not None:
        row["outcome"] = row["decision"]
        accepted = row["decision"] == "accepted"
        row["final_text"] = (row["accepted_text"] or row["completion"]) if accepted else None
    else:
        row["outcome"] = "shown" if row["shown_event_id"] is not None else "pending"
        row["final_text"] = None
    completion, final = row["completion"], row["final_text"]
    row["edit_distance"] = (
        Levenshtein.normalized_distance(completion, final) if completion is not None and final is not None else None
    )


def code_of(
    excluded: bool,
    decision: str | None,
    edited: bool,
    shown: dict[str, Any] | None,
    decided: dict[str, Any] | None,
    edit: dict[str, Any] | None,
) -> dict[str, Any]:
    """A stored row's code (`ROW_CODE`), from the payloads of its winning events: the `generation` (`shown`), the
    decision (`decided`) and the edit, each None where there is none. What `merge` and `derive` set in memory."""
    if excluded:
        return dict.fromkeys(ROW_CODE)
    shown = shown or {}
    code = {field: shown.get(field) for field in GENERATION_CODE}
    code["accepted_text"] = (decided or {}).get("accepted_text")
    if edited:
        code["final_text"] = (edit or {}).get("final_text")
    elif decision == "accepted":
        code["final_text"] = code["accepted_text"] or code["completion"]
    else:
        code["final_text"] = None
    return code
