"""A short-lived in-process cache of what model names resolve to, so that a generation request does not read the
project, its aliases and versions from the database every time (a thread hop and three queries: about a millisecond
of a request whose whole budget is a few; benchmarks/README.md, gateway).

An entry lives `ttl_s`. Any change this process makes to an alias, a version or a project (an ORM flush that touches
one) empties the cache at once, so a promotion through this server is served from its next request; a promotion
made by another process (the CLI, a worker's auto-promotion) is served within `ttl_s`."""

import threading
import time
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

from core.projects import Project
from trainers.models import AdapterAlias, AdapterVersion

K = TypeVar("K")
V = TypeVar("V")
_ROUTING = (AdapterAlias, AdapterVersion, Project)
_epoch = 0  # bumped by every flush that touches what routing reads
_epoch_lock = threading.Lock()


def epoch() -> int:
    return _epoch


def _bump() -> None:
    global _epoch
    with _epoch_lock:
        _epoch += 1


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    if any(isinstance(o, _ROUTING) for group in (session.new, session.dirty, session.deleted) for o in group):
        session.info["routing_changed"] = True
        _bump()


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    # Again at the commit: a request that read the old rows between the flush and the commit cached them.
    if session.info.pop("routing_changed", False):
        _bump()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop("routing_changed", None)


class RouteCache(Generic[K, V]):
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[K, tuple[float, int, V]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic() or entry[1] != _epoch:
            return None
        return entry[2]

    def put(self, key: K, value: V, read_at_epoch: int) -> None:
        """Remember `value`, read from the database after `epoch()` said `read_at_epoch`."""
        if self.ttl_s <= 0 or read_at_epoch != _epoch:
            return
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl_s, read_at_epoch, value)
