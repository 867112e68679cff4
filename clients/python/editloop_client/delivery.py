"""Sending the queue to POST /v1/events: batches by size and time, retries with backoff, never loses an event.

A batch is sent when `batch_size` events are queued or the oldest has waited `flush_interval_s`. An answer of 429,
5xx or a network error is retried after an exponential backoff with full jitter (at least the server's
`Retry-After`); the events stay on disk meanwhile. 401/403 are retried the same way (a key can be fixed without
losing what was queued) and reported. A 2xx removes the batch: stored events, duplicates (already stored by an
earlier try) and invalid events, which are reported, with their field, to `on_rejected` and never retried. A batch
refused whole (400, 413, 422) is split in halves until each invalid event is alone.
"""

import email.utils
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from .queue import DurableQueue, Queued


@dataclass(frozen=True)
class Rejected:
    event_id: str
    field: str
    detail: str
    event: dict[str, Any]


@dataclass
class DeliveryStats:
    sent: int = 0  # events answered by the server: stored + duplicates + rejected
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0
    last_error: str | None = None


@dataclass
class Backoff:
    base_s: float = 0.2
    cap_s: float = 30.0
    attempt: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        delay = random.uniform(0, min(self.cap_s, self.base_s * 2**self.attempt))
        self.attempt += 1
        return max(delay, retry_after or 0.0)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


# The answers that blame what was sent: never retried. Any other 4xx (401, 403, a 404 from a wrong base URL, ...)
# is retried like a 5xx, so that a fixable mistake in the set-up loses nothing.
_THE_EVENTS_FAULT = (400, 413, 422)


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class Sender:
    queue: DurableQueue
    http: httpx.Client
    batch_size: int = 500
    flush_interval_s: float = 1.0
    in_flight: int = 2  # batches sent at once: the next is on the wire while the server commits the last
    on_rejected: Callable[[Rejected], None] | None = None
    backoff: Backoff = field(default_factory=Backoff)
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    rejected: list[Rejected] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="editloop-post")
        self._stats_lock = threading.Lock()
        self._drain_lock = threading.Lock()  # the background thread and a caller's flush() never send the same rows

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="editloop-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.queue.wait(self.batch_size, self.flush_interval_s)
            if self._stop.is_set():
                return
            delay = self.drain_once()
            if delay:
                self._wake.wait(delay)
                self._wake.clear()

    def drain_once(self) -> float:
        """Send what is queued, batch after batch; 0 when the queue is empty, else the delay before a retry."""
        with self._drain_lock:
            return self._drain()

    def _drain(self) -> float:
        while len(self.queue):
            rows = self.queue.peek(self.batch_size * self.in_flight)
            batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            failures = [exc for exc in self._pool.map(self._try, batches) if exc is not None]
            if failures:
                self.stats.retries += 1
                self.stats.last_error = str(failures[0])
                return self.backoff.next_delay(max((f.retry_after or 0.0) for f in failures))
            self.backoff.attempt = 0
        return 0.0

    def _try(self, batch: list[Queued]) -> "_Retry | None":
        try:
            self._deliver(batch)
        except _Retry as exc:
            return exc
        return None

    def flush(self, timeout_s: float) -> bool:
        """Deliver everything queued, retrying within `timeout_s`; True if the queue is empty."""
        deadline = time.monotonic() + timeout_s
        while len(self.queue):
            delay = self.drain_once()
            if not len(self.queue) or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        return not len(self.queue)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self.queue.ready:
            self.queue.ready.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    def _deliver(self, batch: list[Queued]) -> None:
        try:
            body = '{"events":[' + ",".join(q.body for q in batch) + "]}"
            r = self.http.post("/v1/events", content=body.encode(), headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise _Retry(f"network: {exc!r}") from None
        if r.status_code >= 300 and r.status_code not in _THE_EVENTS_FAULT:
            raise _Retry(f"HTTP {r.status_code}: {r.text[:200]}", retry_after_s(r.headers.get("retry-after")))
        if r.status_code in _THE_EVENTS_FAULT and len(batch) > 1:
            half = len(batch) // 2
            self._deliver(batch[:half])
            self._deliver(batch[half:])
            return
        if r.status_code >= 400:
            self._reject(batch[0], _detail(r))
            self.queue.remove(batch[:1])
            return
        body = r.json()
        errors = {e["index"]: e for e in body.get("errors", [])}
        for index, e in errors.items():
            self._reject(batch[index], (e["field"], e["detail"]))
        with self._stats_lock:
            self.stats.sent += len(batch)
            self.stats.stored += body.get("stored", 0)
            self.stats.duplicates += body.get("duplicates", 0)
        self.queue.remove(batch)

    def _reject(self, item: Queued, where: tuple[str, str]) -> None:
        rejected = Rejected(item.event_id, where[0], where[1], item.event)
        with self._stats_lock:
            self.stats.rejected += 1
            self.rejected.append(rejected)
        if self.on_rejected is not None:
            self.on_rejected(rejected)


def _detail(r: httpx.Response) -> tuple[str, str]:
    """The field and the reason of a refused request: `{"detail": "events[0].score: Input should be ..."}`."""
    try:
        detail = str(r.json().get("detail", r.text))
    except ValueError:
        detail = r.text
    where, _, why = detail.partition(": ")
    return (where, why) if why else ("body", detail)
