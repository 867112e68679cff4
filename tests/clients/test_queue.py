"""The durable queue, the deterministic ids (shared with the TypeScript client) and the retry timing."""

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from editloop_client import DurableQueue, QueueFull, event_id
from editloop_client.delivery import Backoff, retry_after_s

SHARED = json.loads((Path(__file__).parents[2] / "clients" / "shared" / "settle_cases.json").read_text())


def ev(i: int) -> dict:
    return {"event_id": f"e{i}", "type": "accepted", "generation_id": f"g{i}", "occurred_at": "2026-01-01T00:00:00Z"}


def test_events_survive_a_reopen_until_removed(tmp_path):
    q = DurableQueue(tmp_path / "q.db")
    assert all(q.put(ev(i)) for i in range(5))
    assert not q.put(ev(0))  # the same event_id: queued once
    q.close()
    q = DurableQueue(tmp_path / "q.db")
    items = q.peek(10)
    assert [i.event for i in items] == [ev(i) for i in range(5)]
    q.remove(items[:2])
    q.close()
    assert [i.event_id for i in DurableQueue(tmp_path / "q.db").peek(10)] == ["e2", "e3", "e4"]


def test_full_policies(tmp_path):
    oldest = DurableQueue(tmp_path / "a.db", max_events=3)
    for i in range(5):
        oldest.put(ev(i))
    assert [i.event_id for i in oldest.peek(10)] == ["e2", "e3", "e4"] and oldest.dropped == 2

    newest = DurableQueue(tmp_path / "b.db", max_events=3, on_full="drop_newest")
    assert [newest.put(ev(i)) for i in range(5)] == [True, True, True, False, False]
    assert [i.event_id for i in newest.peek(10)] == ["e0", "e1", "e2"] and newest.dropped == 2

    strict = DurableQueue(tmp_path / "c.db", max_events=1, on_full="raise")
    strict.put(ev(0))
    with pytest.raises(QueueFull):
        strict.put(ev(1))


@pytest.mark.parametrize("case", SHARED["ids"], ids=lambda c: f"{c['type']}:{c['discriminator']!r}")
def test_event_ids_are_deterministic_and_shared(case):
    assert event_id(case["generation_id"], case["type"], case["discriminator"]) == case["event_id"]


def test_event_ids_tell_logical_events_apart():
    ids = {
        event_id("g", "edited", "a"),
        event_id("g", "edited", "b"),
        event_id("g", "accepted"),
        event_id("h", "accepted"),
    }
    assert len(ids) == 4 and all(len(i) <= 200 for i in ids)


def test_retry_after_and_backoff():
    assert retry_after_s("7") == 7.0
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 28 <= retry_after_s(format_datetime(later, usegmt=True)) <= 30
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    backoff = Backoff(base_s=1, cap_s=8)
    delays = [backoff.next_delay() for _ in range(6)]
    assert all(0 <= d <= min(8, 2**i) for i, d in enumerate(delays))  # full jitter under a doubling cap
    assert backoff.next_delay(retry_after=20) == 20  # never sooner than the server asked


def test_a_rating_has_the_id_the_typescript_client_gives_it(tmp_path):
    from editloop_client import EditloopClient

    client = EditloopClient("http://127.0.0.1:9", "k", queue_path=tmp_path / "q.db", start=False)
    client.track("continue:chat:1").rated(1)  # an int: the id is the same as for 1.0
    [case] = [c for c in SHARED["ids"] if c["type"] == "rating"]
    assert client.queue.peek(1)[0].event_id == case["event_id"]
