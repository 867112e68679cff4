"""A durable, bounded queue of events in SQLite.

An event is committed to the file before `put` returns, in WAL mode: a crash of the process loses nothing that was
put (`fsync=True` also survives a power cut, at a cost of a disk flush per put). Rows leave the file only when the
server has answered for them (stored, a duplicate, or refused as invalid). When the queue holds `max_events`, the
policy decides: `drop_oldest` (default) deletes the oldest rows to make room and counts them in `dropped`;
`drop_newest` refuses the new event (counted too); `raise` raises QueueFull. One process owns a queue file.
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FullPolicy = Literal["drop_oldest", "drop_newest", "raise"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
)
"""


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class Queued:
    seq: int
    event_id: str
    body: str  # the event as JSON, sent as it is

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


class DurableQueue:
    def __init__(
        self,
        path: str | Path,
        max_events: int = 100_000,
        on_full: FullPolicy = "drop_oldest",
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_events, self.on_full = max_events, on_full
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._count = self._db.execute("SELECT count(*) FROM events").fetchone()[0]
        self.dropped = 0
        self.ready = threading.Condition()

    def __len__(self) -> int:
        return int(self._count)

    def put(self, event: dict[str, Any]) -> bool:
        """Write one event; True if it is new to the queue (a second put of the same event_id changes nothing)."""
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._count >= self.max_events and not self._make_room():
                return False
            cur = self._db.execute(
                "INSERT OR IGNORE INTO events (event_id, body) VALUES (?, ?)", (event["event_id"], body)
            )
            added = cur.rowcount == 1
            self._count += added
        if added:
            with self.ready:
                self.ready.notify()
        return added

    def _make_room(self) -> bool:
        if self.on_full == "raise":
            raise QueueFull(f"the queue at {self.path} holds {self._count} events (max_events={self.max_events})")
        if self.on_full == "drop_newest":
            self.dropped += 1
            return False
        excess = self._count - self.max_events + 1
        self._db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)", (excess,))
        self._count -= excess
        self.dropped += excess
        return True

    def peek(self, limit: int) -> list[Queued]:
        with self._lock:
            rows = self._db.execute("SELECT seq, event_id, body FROM events ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [Queued(*row) for row in rows]

    def remove(self, items: list[Queued]) -> None:
        """Remove answered events. `items` is a run of consecutive rows from `peek`, so one range covers them."""
        if not items:
            return
        with self._lock:
            cur = self._db.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", (items[0].seq, items[-1].seq))
            self._count -= cur.rowcount

    def wait(self, at_least: int, timeout: float) -> None:
        """Block until `at_least` events are queued or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self.ready:
            while self._count < at_least and (left := deadline - time.monotonic()) > 0:
                self.ready.wait(left)

    def close(self) -> None:
        with self._lock:
            self._db.close()
