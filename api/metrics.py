"""Prometheus metrics: what the collector, the fold and the gateway count, and `GET /metrics` that serves them.

Counters and histograms live in the process that moves them. Under `editloop serve --workers N` each worker is its
own process, so `PROMETHEUS_MULTIPROC_DIR` (set by api/serve.py) makes prometheus-client write them to shared files,
and a scrape of any worker adds up all of them. What the database already knows (fold queue, runs by state) is read
at scrape time instead, by `DatabaseCollector`, so it is right whichever worker answers."""

import collections
import functools
import hmac
import ipaddress
import os
import time
from collections.abc import Iterator
from datetime import UTC
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

EVENTS = Counter("editloop_events_ingested", "Feedback events received, by type and result", ["type", "result"])
REQUESTS = Histogram(
    "editloop_http_request_duration_seconds",
    "Request latency per route template",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GROUP_COMMIT = Histogram(
    "editloop_group_commit_events",
    "Events per shared ingest transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
FOLDED = Counter("editloop_fold_generations", "Generations folded by this server's folder")
GENERATIONS = Counter("editloop_gateway_generations", "Generations served by the gateway, per version", ["model"])
TOKENS = Counter("editloop_gateway_tokens", "Tokens of served generations, per version and kind", ["model", "kind"])
GENERATION_LATENCY = Histogram(
    "editloop_gateway_generation_seconds",
    "Time to generate a completion (backend only), per version",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def ingested(types: Iterator[tuple[str, str]]) -> None:
    """Count (type, result) pairs: result is stored, duplicate or invalid. One increment per pair kind, not per
    event: under multiprocess mode each is a locked write to a shared file (5% of a batch's ingest CPU, py-spy)."""
    for (event_type, result), n in collections.Counter(types).items():
        EVENTS.labels(event_type, result).inc(n)


def generated(model: str, prompt_tokens: int, completion_tokens: int, seconds: float) -> None:
    GENERATIONS.labels(model).inc()
    TOKENS.labels(model, "prompt").inc(prompt_tokens)
    TOKENS.labels(model, "completion").inc(completion_tokens)
    GENERATION_LATENCY.labels(model).observe(seconds)


class DatabaseCollector(Collector):
    """Gauges read from the database when scraped: the fold queue (depth and age of its oldest row) and the training
    runs by state. A database error leaves them out of that scrape rather than failing it."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.sessions() as session:
                depth, oldest = session.execute(text("SELECT count(*), min(queued_at) FROM fold_queue")).one()
                runs = session.execute(text("SELECT status, count(*) FROM training_runs GROUP BY status")).all()
        except Exception:
            return
        yield GaugeMetricFamily("editloop_fold_queue_depth", "Ingest transactions waiting to be folded", value=depth)
        lag = 0.0
        if oldest is not None:
            lag = max(0.0, time.time() - (oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)).timestamp())
        yield GaugeMetricFamily("editloop_fold_lag_seconds", "Age of the oldest unfolded ingest transaction", value=lag)
        family = GaugeMetricFamily("editloop_training_runs", "Training runs by state", labels=["state"])
        counts = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, **dict(runs)}
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        yield family


def registry(sessions: sessionmaker[Session]) -> CollectorRegistry:
    """What a scrape reads: this process's metrics, or every worker's under multiprocess mode, plus the database's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = CollectorRegistry()
        MultiProcessCollector(reg)
    else:
        from prometheus_client import REGISTRY

        reg = CollectorRegistry()
        reg.register(_Proxy(REGISTRY))
    reg.register(DatabaseCollector(sessions))
    return reg


class _Proxy(Collector):
    """The default registry's metrics inside a registry of our own (which also holds the database gauges)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


def allowed(token: str | None, authorization: str | None, client_host: str | None) -> bool:
    """With a token set, only `Authorization: Bearer <token>`; without one, only callers on loopback."""
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    try:
        return client_host is not None and ipaddress.ip_address(client_host).is_loopback
    except ValueError:
        return False


def exposition(reg: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(reg), CONTENT_TYPE_LATEST


@functools.lru_cache(maxsize=4096)
def request_timer(method: str, route: str, status: int) -> Any:
    """REQUESTS' child for these labels, kept: `labels()` takes a lock and builds a key on every call. The labels
    are route templates and status codes, a bounded set."""
    return REQUESTS.labels(method, route, str(status))


def route_of(scope: dict[str, Any]) -> str:
    """The route template (`/v1/runs/{run_id}`), so that ids do not make a label value each."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
