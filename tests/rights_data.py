"""Events of users whose code carries a unique marker, for the data-rights tests: a deletion must leave the marker
nowhere, and every other user's data as it was."""

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from core import artifacts
from core.db import session_scope
from feedback.models import DatasetSnapshot
from tests.factories import T0
from trainers import registry
from trainers.models import AdapterVersion


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


def publish_version(
    url: str,
    root: Path,
    project_id: int,
    metrics: dict[str, Any],
    snapshot_id: int | None = None,
    parent_id: int | None = None,
) -> tuple[int, str]:
    """Register a policy version whose files are stand-ins (nothing loads them): (id, name)."""
    staging = artifacts.staging_dir(root / "staging", "test")
    (staging / "adapter_config.json").write_text(json.dumps({"r": 8, "nonce": uuid.uuid4().hex}))
    (staging / "adapter_model.safetensors").write_bytes(uuid.uuid4().bytes * 10)
    with session_scope(url) as session:
        version = registry.register(
            session,
            root,
            project_id,
            staging,
            kind="policy",
            method="dpo",
            run_id=None,
            snapshot=session.get(DatasetSnapshot, snapshot_id) if snapshot_id else None,
            parent=session.get(AdapterVersion, parent_id) if parent_id else None,
            base_model="tiny",
            base_revision=None,
            config={},
            metrics=metrics,
        )
        return version.id, version.name
