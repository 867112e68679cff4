"""The outermost layer of the app: a request id for every request (from `X-Request-ID`, or made up, and sent back),
the request-latency histogram per route template, and one access-log line per request. Plain ASGI, so it also
wraps the direct ingest entrance (api/routes/events.py) that FastAPI's middleware does not see."""

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from api import metrics
from core import logs

access = logging.getLogger("editloop.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_QUIET = ("/healthz", "/readyz", "/metrics")

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def observe(app: App, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    headers = dict(scope["headers"])
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    rid = given if _VALID_ID.match(given) else logs.new_id()
    token = logs.request_id.set(rid)
    status = 500
    started = time.perf_counter()

    async def send_with_id(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            # Server time up to the response's start: for a page, everything it took to render it.
            timing = f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()
            extra = [(b"x-request-id", rid.encode()), (b"server-timing", timing)]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    try:
        await app(scope, receive, send_with_id)
    finally:
        seconds = time.perf_counter() - started
        path: str = scope["path"]
        route = metrics.route_of(scope)
        if route == "unmatched" and path == "/v1/events":  # answered by the direct entrance, before routing
            route = path
        metrics.request_timer(scope["method"], route, status).observe(seconds)
        if path not in _QUIET:
            authorization = headers.get(b"authorization")
            client = scope.get("client")
            access.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status,
                seconds * 1000,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "key": logs.key_hint(authorization.decode("latin-1") if authorization else None),
                    "client": client[0] if client else None,
                },
            )
        logs.request_id.reset(token)
