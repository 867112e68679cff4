"""Structured logs: one JSON object per line with the request id; the id rides Celery messages into the task."""

import json
import logging
from types import SimpleNamespace

from celery import signals

from core import logs


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("editloop.test", logging.INFO, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_request_id_and_fields() -> None:
    token = logs.request_id.set("r-123")
    try:
        line = logs.JsonFormatter().format(record("folded %s", status=200, key="elk_abcdef"))
    finally:
        logs.request_id.reset(token)
    out = json.loads(line)
    assert out["request_id"] == "r-123" and out["status"] == 200 and out["key"] == "elk_abcdef"
    assert out["level"] == "info" and out["ts"].endswith("Z") and "\n" not in line
    assert "[r-9]" in logs.TextFormatter().format(record("x", request_id="r-9"))


def test_key_hint_is_a_prefix_never_the_key() -> None:
    key = "elk_" + "s" * 40
    assert logs.key_hint(f"Bearer {key}") == key[:10] and logs.key_hint(None) is None


def test_the_request_id_rides_a_celery_message_into_its_task() -> None:
    logs.connect_celery()
    headers: dict = {}
    token = logs.request_id.set("r-queued")
    try:
        signals.before_task_publish.send(sender="trainers.run_training", headers=headers, body=None)
    finally:
        logs.request_id.reset(token)
    assert headers["request_id"] == "r-queued"

    class Task:
        request = SimpleNamespace(request_id="r-queued", headers=None)

    signals.task_prerun.send(sender=Task(), task=Task(), task_id="t1", args=(), kwargs={})
    assert logs.request_id.get() == "r-queued"
    logs.request_id.set(None)
