"""Logs as one JSON object per line (or plain text, `EDITLOOP_LOG_FORMAT=text`), each carrying the id of the request
that caused it. The id lives in a context variable: set by the API's middleware from `X-Request-ID` (or made up),
copied into the threads FastAPI runs routes in, into the headers of Celery messages sent on the request's behalf,
and back out of them in the worker, so one grep finds a request's ingest, its fold, its task and its training run.

A key never appears in a log: only its first characters, the `hint` that `editloop keys list` shows."""

import contextvars
import json
import logging
import os
import sys
import time
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("editloop_request_id", default=None)
HEADER = "x-request-id"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def new_id() -> str:
    return os.urandom(8).hex()


def key_hint(authorization: str | None) -> str | None:
    """`elk_AbCdEf`: the first 10 characters of a bearer key (the stored `hint`), never the key itself."""
    if not authorization:
        return None
    _, _, key = authorization.partition(" ")
    return key.strip()[:10] or None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            out["request_id"] = rid
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in out and not name.startswith("_") and name != "color_message":
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:  # orjson: the access log formats a line per request, on the event loop
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson refuses (an integer past 64 bits, say), json writes
            return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None) or request_id.get()
        record.rid = f" [{rid}]" if rid else ""
        return super().format(record)


def setup(fmt: str | None = None, level: str | None = None) -> None:
    """Send every logger (uvicorn's and Celery's included) through one handler on stderr in the chosen format."""
    fmt = fmt or os.environ.get("EDITLOOP_LOG_FORMAT", "json")
    # Neither format prints the caller's file and line or the thread and process names: finding the caller walked
    # the stack on every record (the logging HOWTO's "Optimization" section names these switches).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("EDITLOOP_LOG_LEVEL", "INFO"))
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.task", "celery.worker"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # `editloop.access` (api/observe.py) replaces uvicorn's access line: it has the request id, route and key hint.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False


def log_config() -> dict[str, Any]:
    """uvicorn's `log_config`: leave the handlers to `setup` (uvicorn otherwise installs its own plain ones)."""
    return {"version": 1, "disable_existing_loggers": False}


_celery_connected = False


def connect_celery() -> None:
    """Carry the request id through Celery: into the headers of a message sent while one is set, and from them into
    the context of the task that runs it (and so of the training run it executes)."""
    global _celery_connected
    if _celery_connected:
        return
    _celery_connected = True
    from celery import signals

    @signals.before_task_publish.connect(weak=False)
    def _publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        rid = request_id.get()
        if rid and headers is not None:
            headers.setdefault("request_id", rid)

    @signals.task_prerun.connect(weak=False)
    def _prerun(task: Any = None, **_: Any) -> None:
        request = getattr(task, "request", None)
        # Celery puts a message's custom headers on the request itself (older protocols: under `headers`).
        rid = getattr(request, "request_id", None) or (getattr(request, "headers", None) or {}).get("request_id")
        request_id.set(rid or new_id())
