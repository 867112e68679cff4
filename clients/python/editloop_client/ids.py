"""Deterministic event ids: the same logical event always gets the same id, so a resend is a duplicate on the
server, never a second event. The TypeScript client computes the same ids (clients/shared/ids.json)."""

import hashlib

PREFIX = "el1-"


def event_id(generation_id: str, kind: str, discriminator: str = "") -> str:
    """sha256 of (generation id, event type, discriminator), joined by a separator no id contains, as 40 hex
    digits after a version prefix. The discriminator tells apart two events of one type for one generation: the
    final text of an `edited`, the score of a `rating`, the accepted text of a partial accept."""
    digest = hashlib.sha256(f"{generation_id}\x1f{kind}\x1f{discriminator}".encode()).hexdigest()
    return PREFIX + digest[:40]
