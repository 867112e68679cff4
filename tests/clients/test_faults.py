"""Faults injected by a proxy in front of a real `editloop serve`: 503 and 429 with Retry-After are retried no sooner
than asked, and an answer lost after the server stored the batch is resent and counted as duplicates, not stored
twice."""

import http.server
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from editloop_client import Backoff, EditloopClient, event_id

from tests.clients.conftest import LiveServer


class FaultProxy(http.server.ThreadingHTTPServer):
    """Forwards POSTs to `upstream`; `faults` says what to do with each request in turn: "503", "429" (with
    Retry-After: 1), "lose" (forward, then drop the connection without an answer) or "pass"."""

    def __init__(self, upstream: str, faults: list[str]) -> None:
        self.upstream, self.faults, self.seen = upstream, faults, []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FaultProxy

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        fault = self.server.faults.pop(0) if self.server.faults else "pass"
        self.server.seen.append((time.monotonic(), fault))
        if fault in ("503", "429"):
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", "1")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        r = httpx.post(
            self.server.upstream + self.path,
            content=body,
            headers={"authorization": self.headers["authorization"], "content-type": "application/json"},
        )
        if fault == "lose":  # stored upstream, and the answer never reaches the client
            self.close_connection = True
            self.connection.close()
            return
        self.send_response(r.status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(live: LiveServer, request: pytest.FixtureRequest) -> Iterator[FaultProxy]:
    server = FaultProxy(live.url, list(request.param))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("proxy", [["503", "429", "pass"]], indirect=True)
def test_5xx_and_429_are_retried_no_sooner_than_retry_after(proxy: FaultProxy, live: LiveServer, keys, tmp_path):
    backoff = Backoff(base_s=0.01, cap_s=0.05)  # far below the server's Retry-After
    client = EditloopClient(proxy.url, keys.ingest, queue_path=tmp_path / "q.db", backoff=backoff, start=False)
    for i in range(10):
        client.track(f"r-{i}").accepted()
    assert client.flush(timeout_s=10)
    (_, a), (t429, b), (t_after, c) = proxy.seen
    assert (a, b, c) == ("503", "429", "pass")
    assert t_after - t429 >= 1.0  # Retry-After: 1 was honoured
    assert client.stats.retries == 2 and client.stats.stored == 10
    assert len(live.stored(keys.project)) == 10
    client.close()


@pytest.mark.parametrize("proxy", [["lose", "pass"]], indirect=True)
def test_a_lost_answer_is_resent_as_duplicates_never_stored_twice(proxy: FaultProxy, live: LiveServer, keys, tmp_path):
    client = EditloopClient(
        proxy.url, keys.ingest, queue_path=tmp_path / "q.db", backoff=Backoff(0.01, 0.05), start=False
    )
    for i in range(10):
        client.track(f"lost-{i}").edited(f"return {i}")
    assert client.flush(timeout_s=10)
    assert [f for _, f in proxy.seen] == ["lose", "pass"]
    assert (client.stats.stored, client.stats.duplicates) == (0, 10)  # the first try stored them all
    stored = live.stored(keys.project)
    assert len(stored) == len(set(stored)) == 10
    client.close()


def test_a_wrong_base_url_loses_nothing(live: LiveServer, keys, tmp_path):
    """A 404 blames the set-up, not the events: they wait on disk until a client with the right URL sends them."""
    client = EditloopClient(f"{live.url}/v1", keys.ingest, queue_path=tmp_path / "q.db", start=False)
    client.track("g").accepted()
    assert not client.flush(timeout_s=0.5)
    assert "HTTP 404" in (client.stats.last_error or "") and len(client.queue) == 1 and not client.rejected
    client.close(timeout_s=0)
    with EditloopClient(live.url, keys.ingest, queue_path=tmp_path / "q.db") as fixed:
        assert len(fixed.queue) == 1
    assert live.stored(keys.project) == [event_id("g", "accepted")]
