"""Group commit: concurrent ingest requests share one transaction.

A transaction has a fixed cost in Python and in Postgres whatever it holds, which is most of the cost of a one-event
request (benchmarks/README.md, ingest). Requests queue their validated events here; a writer takes what has queued as
one group, stores it in one transaction, and answers every request once that transaction has committed, each with the
counts of its own events. If the shared transaction fails, each request is retried in a transaction of its own, so one
bad request fails alone.

A group closes at once (`eager`, the default) when no group of more than one event is being written (requests come
slower than transactions end, as with a gateway's one generation at a time: waiting for company would only add
latency, as Postgres' `commit_siblings` reasons), when it holds `max_events`, or once `max_wait_s` has passed since
its first request arrived and it holds as many events as the group being written: while the database is busy, the
next group grows, so the busier the collector, the fewer transactions per event, and with a second writer two groups
of about the same size overlap, one in Postgres while the other is built in Python."""

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from api import metrics
from core import logs
from core.projects import Principal
from core.settings import Settings
from feedback import fold, service
from feedback.schemas import Event, IngestResult

log = logging.getLogger(__name__)


def transient(exc: BaseException) -> bool:
    # Postgres deadlock (40P01) or serialization failure (40001), raised through SQLAlchemy or by psycopg itself
    # (deferred ingest executes on the DBAPI connection); SQLite "database is locked".
    code = getattr(getattr(exc, "orig", exc), "sqlstate", None)
    return code in ("40P01", "40001") or (isinstance(exc, OperationalError) and "locked" in str(exc))


# Retries a function on a transient database error. Thread-safe: tenacity keeps each call's state in a
# thread-local. The fold worker (api/fold_worker.py) uses it too.
TRANSIENT_RETRY = Retrying(
    retry=retry_if_exception(transient),
    stop=stop_after_attempt(5),
    wait=wait_random_exponential(0.01, 0.5),
    reraise=True,
)


@dataclass(eq=False, slots=True)
class _Submission:
    principal: Principal
    batch: service.Batch
    queued_at: float
    answer: "asyncio.Future[IngestResult]"
    request_id: str | None = field(default_factory=logs.request_id.get)  # made in the request's context


class GroupCommitter:
    """One per process, started and stopped by the app's lifespan (`app.state.group_commit`)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        max_events: int,
        max_wait_s: float,
        max_queued: int,
        writers: int = 1,
        settings: Settings | None = None,
        after_commit: Callable[[list[str]], None] | None = None,
        eager: bool = True,
    ) -> None:
        self.sessions, self.max_events, self.max_wait_s, self.writers = sessions, max_events, max_wait_s, writers
        self.eager = eager  # close a group at once while requests come slower than transactions end
        self.settings = settings or Settings()
        self.after_commit = after_commit  # called in the event loop after each transaction that stored something,
        # with the ids of the requests it stored
        self._slots = asyncio.Semaphore(max_queued)  # back-pressure: beyond this, requests wait to get in line
        self._queue: deque[_Submission | None] = deque()  # None: a writer stops there
        self._wake = asyncio.Event()  # set when a request arrives or a group has been written
        self._collecting = asyncio.Lock()  # one writer gathers the next group while the others write theirs
        self._in_flight: list[int] = []  # sizes of the groups being written
        self._writers: list[asyncio.Task[None]] = []
        # The writers' transactions run on threads of their own: a plain executor hop costs a fraction of anyio's
        # (run_in_threadpool, with its capacity limiter, cancel scopes and queue; benchmarks/README.md, ingest).
        self._threads: ThreadPoolExecutor | None = None
        self.waiting = 0  # requests waiting for their transaction to commit

    async def __aenter__(self) -> "GroupCommitter":
        if self.max_wait_s > 0:
            self._threads = ThreadPoolExecutor(self.writers, thread_name_prefix="group-commit")
            self._writers = [asyncio.create_task(self._write_loop()) for _ in range(self.writers)]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        """Answer every request that is waiting, then stop the writers."""
        writers, self._writers = self._writers, []  # from now on, requests commit alone
        self._queue.extend([None] * len(writers))
        self._wake.set()
        try:
            await asyncio.gather(*writers)
        finally:
            if self._threads is not None:
                self._threads.shutdown(wait=False)  # every writer has returned: no transaction is running

    async def submit(self, principal: Principal, batch: service.Batch) -> IngestResult:
        """Store the batch's valid events; returns once they are committed."""
        if not batch.events:
            return service.tally(batch, set(), {})
        loop = asyncio.get_running_loop()
        submission = _Submission(principal, batch, loop.time(), loop.create_future())
        self.waiting += 1
        try:
            async with self._slots:
                if not self._writers:  # grouping is off, or the app is stopping
                    outcome = (await run_in_threadpool(self._write, [submission]))[0]
                    self._committed([outcome], [submission])
                    if isinstance(outcome, Exception):
                        raise outcome
                    return outcome
                self._queue.append(submission)
                self._wake.set()
                return await submission.answer
        finally:
            self.waiting -= 1

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            async with self._collecting:
                group, stopping = await self._collect()
            if not group:
                continue
            size = sum(len(s.batch.events) for s in group)
            metrics.GROUP_COMMIT.observe(size)
            self._in_flight.append(size)
            try:
                outcomes = await asyncio.get_running_loop().run_in_executor(self._threads, self._write, group)
            except BaseException:
                for submission in group:
                    submission.answer.cancel()
                raise
            finally:
                self._in_flight.remove(size)
                self._wake.set()
            self._committed(outcomes, group)
            for submission, outcome in zip(group, outcomes, strict=True):
                if submission.answer.done():  # its request went away; its events are stored all the same
                    continue
                if isinstance(outcome, Exception):
                    submission.answer.set_exception(outcome)
                else:
                    submission.answer.set_result(outcome)

    def _committed(self, outcomes: list[IngestResult | Exception], group: list[_Submission]) -> None:
        if self.after_commit is not None and any(isinstance(o, IngestResult) and o.stored for o in outcomes):
            self.after_commit([s.request_id for s in group if s.request_id])

    async def _collect(self) -> tuple[list[_Submission], bool]:
        """The next group (see the module's docstring); the second value says the app is stopping after it."""
        loop = asyncio.get_running_loop()
        group: list[_Submission] = []
        size = 0
        while size < self.max_events:
            if self._queue:
                submission = self._queue.popleft()
                if submission is None:
                    return group, True
                group.append(submission)
                size += len(submission.batch.events)
                continue
            if group and self.eager and max(self._in_flight, default=0) <= 1:
                break  # requests come slower than transactions end: waiting for company would only add latency
            deadline = group[0].queued_at + self.max_wait_s if group else None
            if deadline is not None and loop.time() >= deadline:
                if not self._in_flight or size >= max(self._in_flight):
                    break
                deadline = None  # past the window: grow until the group in flight is matched or written
            self._wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                pass
        return group, False

    def _write(self, group: list[_Submission]) -> list[IngestResult | Exception]:
        """In a worker thread: one transaction for the group; if it fails, one per submission."""
        if len(group) > 1:
            try:
                return list(TRANSIENT_RETRY(self._transaction, group))
            except Exception:
                log.warning(
                    "a shared transaction of %d requests failed; retrying each alone", len(group), exc_info=True
                )
        outcomes: list[IngestResult | Exception] = []
        for submission in group:
            try:
                outcomes += TRANSIENT_RETRY(self._transaction, [submission])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _transaction(self, group: list[_Submission]) -> list[IngestResult]:
        # An event_id sent twice in one group is stored for the first submission and a duplicate for the others.
        owner: dict[tuple[int, str], _Submission] = {}
        projects: dict[tuple[int, tuple[str, ...]], list[Event]] = {}
        for submission in group:
            key = (submission.principal.project_id, submission.principal.excluded_paths)
            events = projects.setdefault(key, [])
            for event in submission.batch.events:
                if owner.setdefault((key[0], event.event_id), submission) is submission:
                    events.append(event)
        stored: dict[int, set[str]] = {}
        secrets: dict[int, dict[str, Counter[str]]] = {}
        with self.sessions() as session:
            inline = fold.inline(session, self.settings)
            for (project_id, excluded_paths), events in sorted(projects.items()):  # one lock order everywhere
                written = service.store(session, project_id, events, excluded_paths, inline)
                stored.setdefault(project_id, set()).update(written.stored)
                secrets.setdefault(project_id, {}).update(written.secrets)
            session.commit()
        results = []
        for submission in group:
            project_id = submission.principal.project_id
            mine = {
                e.event_id
                for e in submission.batch.events
                if e.event_id in stored[project_id] and owner[project_id, e.event_id] is submission
            }
            results.append(service.tally(submission.batch, mine, secrets[project_id]))
            metrics.ingested((e.type, "stored" if e.event_id in mine else "duplicate") for e in submission.batch.events)
        return results
