"""The editor-facing client: generate through the gateway (or bring a generation id from any OpenAI client), then
`track(generation_id)` and say what the user did. Every event is on disk before the call returns and is delivered
by a background thread (delivery.py); what the user kept is followed by the settle tracker (settle.py)."""

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from .delivery import Backoff, DeliveryStats, Rejected, Sender
from .ids import event_id
from .queue import DurableQueue, FullPolicy
from .settle import DEFAULT_SETTLE_S, Settled, SettleTracker

DEFAULT_QUEUE = Path.home() / ".editloop" / "queue.db"


@dataclass(frozen=True)
class Generation:
    id: str  # the generation id: the gateway's response id
    text: str
    model: str  # the adapter version that produced it, e.g. "v3" or "base"
    raw: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Tracked:
    """What the user did with one generation. Each call writes one event with a deterministic id."""

    def __init__(self, client: "EditloopClient", generation_id: str) -> None:
        self._client, self.generation_id = client, generation_id

    def accepted(
        self, accepted_text: str | None = None, *, document: str | None = None, offset: int | None = None
    ) -> None:
        """The user took the completion (or `accepted_text`, a part of it). With `document` and `offset` (where
        the accepted text now starts), the settle tracker follows it and posts `edited` once it settles."""
        extra = {"accepted_text": accepted_text} if accepted_text is not None else {}
        self._client._emit(self.generation_id, "accepted", accepted_text or "", extra)
        if document is not None and offset is not None:
            text = accepted_text if accepted_text is not None else self._client._completions.get(self.generation_id)
            if not text:
                raise ValueError("accepted: give accepted_text to track a generation the client did not generate")
            self._client._track_region(self.generation_id, document, offset, text)

    def rejected(self, reason: str | None = None) -> None:
        self._client._emit(self.generation_id, "rejected", "", {"reason": reason} if reason else {})

    def edited(self, final_text: str) -> None:
        self._client._emit(self.generation_id, "edited", final_text, {"final_text": final_text})

    def rated(self, score: float, comment: str | None = None, key: str = "") -> None:
        extra: dict[str, Any] = {"score": score} | ({"comment": comment} if comment else {})
        self._client._emit(self.generation_id, "rating", f"{float(score)}:{key}", extra)


class EditloopClient:
    """Sync client. `close()` (or the context manager) flushes what is queued; what is not delivered by then stays
    on disk and goes out the next time a client opens the same queue."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        queue_path: str | Path = DEFAULT_QUEUE,
        max_events: int = 100_000,
        on_full: FullPolicy = "drop_oldest",
        fsync: bool = False,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        settle_s: float = DEFAULT_SETTLE_S,
        on_rejected: Callable[[Rejected], None] | None = None,
        backoff: Backoff | None = None,
        timeout_s: float = 30.0,
        start: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.queue = DurableQueue(queue_path, max_events=max_events, on_full=on_full, fsync=fsync)
        self.sender = Sender(
            self.queue,
            self.http,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            on_rejected=on_rejected,
            backoff=backoff or Backoff(),
        )
        self.tracker = SettleTracker(settle_s)
        self._tracker_lock = threading.Lock()
        self._completions: dict[str, str] = {}
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        if start:
            self.sender.start()
            self._ticker = threading.Thread(target=self._tick_loop, name="editloop-settle", daemon=True)
            self._ticker.start()

    # ── generations ──
    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        model: str = "production",
        **params: Any,
    ) -> Generation:
        """One completion through the gateway (`messages` for chat). The gateway records the generation itself."""
        path, body = _request(prompt, messages, model, params)
        r = self.http.post(path, json=body)
        r.raise_for_status()
        return self._remember(_generation(r.json()))

    def log_generation(
        self,
        generation_id: str,
        completion: str,
        model: str,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        **fields: Any,
    ) -> Tracked:
        """Record a generation made elsewhere (your own model, another provider)."""
        body = {"completion": completion, "model": model, **fields}
        body |= {"prompt": prompt} if messages is None else {"messages": messages}
        self._emit(generation_id, "generation", "", body)
        self._remember_text(generation_id, completion)
        return Tracked(self, generation_id)

    def track(self, generation_id: str) -> Tracked:
        return Tracked(self, generation_id)

    # ── the editor's document events, for the settle tracker ──
    def text_changed(self, document: str, offset: int, deleted: int, inserted: str) -> None:
        with self._tracker_lock:
            self.tracker.change(document, offset, deleted, inserted, time.monotonic())

    def document_saved(self, document: str) -> None:
        with self._tracker_lock:
            self._post_settled(self.tracker.saved(document))

    def document_closed(self, document: str) -> None:
        with self._tracker_lock:
            self._post_settled(self.tracker.closed(document))

    # ── lifecycle ──
    @property
    def stats(self) -> DeliveryStats:
        return self.sender.stats

    @property
    def rejected(self) -> list[Rejected]:
        return self.sender.rejected

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self.sender.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Settle every tracked region now, deliver what is queued (within `timeout_s`), and close. True if
        nothing is left on disk."""
        if self._closed.is_set():
            return not len(self.queue)
        with self._tracker_lock:
            self._post_settled(self.tracker.settle_all())
        self._closed.set()
        self.sender.stop()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        empty = self.sender.flush(timeout_s)
        self.sender.shutdown()
        self.queue.close()
        self.http.close()
        return empty

    def __enter__(self) -> "EditloopClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ── inside ──
    def _emit(self, generation_id: str, kind: str, discriminator: str, fields: dict[str, Any]) -> None:
        event = {
            "event_id": event_id(generation_id, kind, discriminator),
            "type": kind,
            "generation_id": generation_id,
            "occurred_at": _now(),
            **fields,
        }
        self.queue.put(event)

    def _remember(self, generation: Generation) -> Generation:
        self._remember_text(generation.id, generation.text)
        return generation

    def _remember_text(self, generation_id: str, completion: str) -> None:
        """The completions this client made or logged, to track an accept of them; the latest 1024."""
        self._completions[generation_id] = completion
        if len(self._completions) > 1024:
            del self._completions[next(iter(self._completions))]

    def _track_region(self, generation_id: str, document: str, offset: int, text: str) -> None:
        with self._tracker_lock:
            self._post_settled(self.tracker.track(generation_id, document, offset, text, time.monotonic()))

    def _post_settled(self, settled: list[Settled]) -> None:
        for s in settled:
            if s.changed:
                self.track(s.key).edited(s.final_text)

    def _tick_loop(self) -> None:
        while not self._closed.wait(min(1.0, self.tracker.settle_s / 4)):
            with self._tracker_lock:
                self._post_settled(self.tracker.tick(time.monotonic()))


class AsyncEditloopClient:
    """The same client for asyncio code: `generate` is awaited over httpx.AsyncClient; tracking writes to the
    local queue (tens of microseconds, no network) and so stays synchronous; `flush`/`aclose` run off the loop."""

    def __init__(self, base_url: str, api_key: str, **options: Any) -> None:
        self.sync = EditloopClient(base_url, api_key, **options)
        self.http = httpx.AsyncClient(
            base_url=self.sync.base_url, headers=dict(self.sync.http.headers), timeout=options.get("timeout_s", 30.0)
        )

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        model: str = "production",
        **params: Any,
    ) -> Generation:
        path, body = _request(prompt, messages, model, params)
        r = await self.http.post(path, json=body)
        r.raise_for_status()
        return self.sync._remember(_generation(r.json()))

    def track(self, generation_id: str) -> Tracked:
        return self.sync.track(generation_id)

    def log_generation(self, *args: Any, **kwargs: Any) -> Tracked:
        return self.sync.log_generation(*args, **kwargs)

    def text_changed(self, document: str, offset: int, deleted: int, inserted: str) -> None:
        self.sync.text_changed(document, offset, deleted, inserted)

    def document_saved(self, document: str) -> None:
        self.sync.document_saved(document)

    def document_closed(self, document: str) -> None:
        self.sync.document_closed(document)

    async def flush(self, timeout_s: float = 10.0) -> bool:
        return await asyncio.to_thread(self.sync.flush, timeout_s)

    async def aclose(self, timeout_s: float = 10.0) -> bool:
        await self.http.aclose()
        return await asyncio.to_thread(self.sync.close, timeout_s)

    async def __aenter__(self) -> "AsyncEditloopClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def _request(
    prompt: str | None, messages: list[dict[str, str]] | None, model: str, params: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of prompt or messages")
    if messages is not None:
        return "/v1/chat/completions", {"model": model, "messages": messages, **params}
    return "/v1/completions", {"model": model, "prompt": prompt, **params}


def _generation(body: dict[str, Any]) -> Generation:
    choice = body["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return Generation(id=body["id"], text=text, model=body.get("model", ""), raw=body)
