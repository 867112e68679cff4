"""Small event factories."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def new_id(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def generation(gid: str, t: float = 0, **fields: Any) -> dict[str, Any]:
    event = {
        "event_id": f"{gid}:gen",
        "type": "generation",
        "generation_id": gid,
        "occurred_at": at(t),
        "prompt": "def add(a, b):",
        "completion": "    return a + b\n",
        "model": "base",
    }
    event.update(fields)
    return event


def feedback(gid: str, kind: str, t: float, suffix: str = "", **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{gid}:{kind}{suffix}",
        "type": kind,
        "generation_id": gid,
        "occurred_at": at(t),
        **fields,
    }
