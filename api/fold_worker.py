"""The fold worker: folds the events that deferred ingest queued (feedback/fold.py), in the API process that took them.

`poke()` after each ingest commit; the worker waits `delay_s` (so a generation's feedback, posted right after it,
folds in the same write), then folds queue rows in transactions of `batch_rows` until none is left. It also looks
every `idle_s`, so rows that another process queued and did not fold (it was killed) are folded here. Several
processes fold side by side: each takes rows that no one else holds."""

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import metrics
from api.group_commit import TRANSIENT_RETRY
from feedback import fold

log = logging.getLogger(__name__)


class FoldWorker:
    def __init__(self, sessions: sessionmaker[Session], delay_s: float, batch_rows: int, idle_s: float = 5.0):
        self.sessions, self.delay_s, self.batch_rows, self.idle_s = sessions, delay_s, batch_rows, idle_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.folded = 0  # generations written since start
        self._postgres: bool | None = None  # known at the first drain
        self._requests: set[str] = set()  # ids of the requests whose commits poked the folder since its last drain

    async def __aenter__(self) -> "FoldWorker":
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Fold what is left, then stop. (Anything still queued is folded by the next reader or fold worker.)"""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await run_in_threadpool(self._drain)
        except Exception:
            log.warning("folding at shutdown failed; the queue keeps the rows", exc_info=True)

    def poke(self, request_ids: Iterable[str] = ()) -> None:
        """Fold soon; `request_ids` (of the ingest requests just committed) go on the fold's log line."""
        if len(self._requests) < 100:
            self._requests.update(request_ids)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            try:
                await run_in_threadpool(self._drain)
            except Exception:  # the database went away, say: the rows stay queued, and the next turn retries
                log.warning("folding failed; will retry", exc_info=True)
                await asyncio.sleep(1.0)

    def _drain(self) -> None:
        """In a worker thread: fold until the queue is empty (or others hold the rest). On Postgres only: SQLite
        folds inline and has no queue."""
        if self._postgres is None:
            with self.sessions() as session:
                self._postgres = session.get_bind().dialect.name == "postgresql"
        if self._postgres:
            requests, self._requests = sorted(self._requests), set()
            folded = TRANSIENT_RETRY(fold.drain, self.sessions, self.batch_rows)
            self.folded += folded
            if folded:
                metrics.FOLDED.inc(folded)
                log.info("folded %d generations", folded, extra={"generations": folded, "request_ids": requests})
