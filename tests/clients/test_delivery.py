"""The Python client against a real `editloop serve`: killed and restarted in the middle of a stream of events,
a client killed before it could send, invalid events, and the settle tracker's `edited`, end to end."""

import subprocess
import sys
import textwrap
import threading
import time
import uuid

import httpx
from editloop_client import Backoff, EditloopClient, event_id

from tests.clients.conftest import ROOT, LiveServer
from tests.conftest import free_port

FAST = dict(batch_size=100, flush_interval_s=0.05, backoff=Backoff(base_s=0.05, cap_s=0.5))


def test_server_killed_and_restarted_mid_stream_stores_every_event_once(live: LiveServer, keys, tmp_path):
    client = EditloopClient(live.url, keys.ingest, queue_path=tmp_path / "q.db", **FAST)
    sent: list[str] = []
    for i in range(1500):
        gid = f"gen-{uuid.uuid4().hex[:12]}"
        client.log_generation(gid, completion=f"return {i}", model="m", prompt=f"p{i}")
        client.track(gid).accepted()
        sent += [gid]
        if i == 500:
            live.kill()  # mid-stream: some batches answered, some in flight, the rest queued
        if i == 1000:
            live.start()
        if i % 100 == 0:
            time.sleep(0.05)
    assert client.close(timeout_s=30), f"{len(client.queue)} events left on disk"
    stored = live.stored(keys.project)
    assert len(stored) == len(set(stored)) == 3000
    assert client.stats.retries > 0 and client.stats.stored + client.stats.duplicates == 3000


def test_a_client_killed_before_sending_loses_nothing(live: LiveServer, keys, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every try fails
    script = textwrap.dedent(f"""
        import os, signal
        from editloop_client import EditloopClient
        c = EditloopClient({dead!r}, {keys.ingest!r}, queue_path={str(tmp_path / "q.db")!r})
        for i in range(200):
            c.track(f"offline-{{i}}").rated(1.0)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60)
    assert proc.returncode == -9
    with EditloopClient(live.url, keys.ingest, queue_path=tmp_path / "q.db", **FAST) as client:
        assert len(client.queue) == 200
    assert len(live.stored(keys.project)) == 200


def test_invalid_events_are_reported_with_their_field_and_never_retried(live: LiveServer, keys, tmp_path):
    seen = []
    client = EditloopClient(live.url, keys.ingest, queue_path=tmp_path / "q.db", on_rejected=seen.append, **FAST)
    client.track("g-bad").rated(5)  # alone: the server refuses the whole batch (422)
    assert client.flush(10)
    client.track("g-1").accepted()
    client.track("g-2").rated(-3)  # beside a valid event: reported by index in a 200
    client.track("g-3").rejected("no")
    assert client.close(10)
    assert [(r.event["generation_id"], r.field) for r in seen] == [
        ("g-bad", "events[0].score"),
        ("g-2", "events[1].score"),
    ]
    assert "less than or equal to 1" in seen[0].detail
    assert sorted(live.stored(keys.project)) == sorted([event_id("g-1", "accepted"), event_id("g-3", "rejected")])


def test_a_resend_is_a_duplicate(live: LiveServer, keys, tmp_path):
    for name in ("a", "b"):  # two queues (two machines, or a queue restored from a backup) send the same events
        with EditloopClient(live.url, keys.ingest, queue_path=tmp_path / f"{name}.db", **FAST) as client:
            client.track("g").accepted()
            client.track("g").accepted()  # the same logical event: queued once
            client.track("g").edited("return 2")
            assert len(client.queue) == 2
    assert len(live.stored(keys.project)) == 2


def test_settled_edit_posts_what_the_user_kept(live: LiveServer, keys, tmp_path):
    client = EditloopClient(live.url, keys.ingest, queue_path=tmp_path / "q.db", settle_s=0.3, **FAST)
    doc = "def add(a, b):\n"
    client.log_generation("g-settle", completion="    return a+b", model="m", prompt=doc)
    client.track("g-settle").accepted(document="file:///x.py", offset=len(doc))
    client.text_changed("file:///x.py", 0, 0, "# math\n")  # before it: a shift
    client.text_changed("file:///x.py", len(doc) + 7 + 12, 0, " ")  # inside, before the "+"
    client.text_changed("file:///x.py", len(doc) + 7 + 12, 0, " ")
    client.log_generation("g-same", completion="pass", model="m", prompt="x")
    client.track("g-same").accepted(document="file:///y.py", offset=0)
    client.document_saved("file:///y.py")  # unchanged: nothing more is posted
    deadline = time.monotonic() + 10
    admin = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {keys.admin}"})
    while time.monotonic() < deadline:
        g = admin.get("/v1/generations/g-settle").json()
        if g.get("outcome") == "edited":
            break
        time.sleep(0.1)
    assert g["outcome"] == "edited" and g["final_text"] == "    return a  +b"
    assert admin.get("/v1/generations/g-same").json()["outcome"] == "accepted"
    assert client.close(10)


def test_events_queued_while_the_server_is_away_go_out_when_it_returns(tmp_path, keys, live: LiveServer):
    away = LiveServer(live.db_url, live.data_dir)  # the same database, a server not yet started
    client = EditloopClient(away.url, keys.ingest, queue_path=tmp_path / "q.db", **FAST)
    for i in range(50):
        client.track(f"later-{i}").rejected("offline")
    time.sleep(0.3)
    assert len(client.queue) == 50 and client.stats.retries > 0
    threading.Thread(target=away.start).start()
    try:
        assert client.close(timeout_s=30)
    finally:
        away.kill()
    assert len(live.stored(keys.project)) == 50
