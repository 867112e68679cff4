"""Events of users whose code carries a unique marker, for the data-rights tests: a deletion must leave the marker
nowhere, and every other user's data as it was."""

import uuid
from datetime import timedelta
from typing import Any

from tests.factories import T0


def user_events(
    user: str, marker: str, n: int = 6, *, session: str | None = None, start: int = 0, repository: str | None = None
) -> list[dict[str, Any]]:
    """`n` generations of `user`: most edited (edit pair, KTO and SFT rows), some accepted; the marker is in every
    prompt, completion, final text and metadata."""
    events: list[dict[str, Any]] = []
    for i in range(start, start + n):
        gid = f"{user}-{uuid.uuid4().hex[:8]}"
        t = T0 + timedelta(minutes=i)
        metadata: dict[str, Any] = {"note": f"ticket {marker}"}
        if repository:
            metadata["repository"] = repository
        events.append(
            {
                "event_id": f"{gid}:gen",
                "type": "generation",
                "generation_id": gid,
                "occurred_at": t.isoformat(),
                "prompt": f"def scale_{i}(values):\n    # {marker}: scale by {i}\n",
                "completion": f"    return [v * {i} for v in values]  # {marker}\n",
                "model": "base",
                "language": "python",
                "file_path": f"src/{user}/mod_{i}.py",
                "user": user,
                "session": session or f"{user}-session",
                "metadata": metadata,
            }
        )
        if i % 3 == 2:
            events.append(_feedback(gid, "accepted", t))
        else:
            final = f"    result = [value * {i} for value in values]\n    return result  # {marker} kept\n"
            events.append(_feedback(gid, "edited", t, final_text=final))
    return events


def shared_prompt_events(user: str, outcome: str, text: str) -> list[dict[str, Any]]:
    """One generation of a prompt every user shares (its choice pairs join two users' generations)."""
    gid = f"{user}-shared-{uuid.uuid4().hex[:6]}"
    t = T0 + timedelta(hours=1)
    return [
        {
            "event_id": f"{gid}:gen",
            "type": "generation",
            "generation_id": gid,
            "occurred_at": t.isoformat(),
            "prompt": "def shared_helper(items):\n",
            "completion": text,
            "model": "base",
            "language": "python",
            "user": user,
        },
        _feedback(gid, outcome, t),
    ]


def _feedback(gid: str, kind: str, t: Any, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"{gid}:{kind}",
        "type": kind,
        "generation_id": gid,
        "occurred_at": (t + timedelta(seconds=30)).isoformat(),
        **fields,
    }
