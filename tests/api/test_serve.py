"""`editloop serve --workers 2`: a SO_REUSEPORT socket per worker, a worker that dies is replaced, SIGTERM stops all."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.serve import reuseport_supported
from tests.conftest import free_port


def _children(pid: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    workers = []
    for child in map(int, out.split()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(child)
    return sorted(workers)


def _wait(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def _serve(db_url: str) -> tuple[subprocess.Popen, int]:
    """`editloop serve --workers 2` as a user starts it, on a free port."""
    port = free_port()
    env = {**os.environ, "EDITLOOP_DATABASE_URL": db_url}
    argv = [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "2", "--no-background"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.skipif(not reuseport_supported(), reason="SO_REUSEPORT load balancing is Linux's")
def test_workers_are_supervised_and_stop_on_sigterm(pg_url):
    proc, port = _serve(pg_url)
    try:
        _wait(lambda: _healthy(port) and len(_children(proc.pid)) == 2)
        first = _children(proc.pid)
        # Each worker has its own listening socket on the port: many connections all get answers.
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) for _ in range(8)]
        assert all(c.get("/healthz").status_code == 200 for c in clients)
        for c in clients:
            c.close()

        os.kill(first[0], signal.SIGKILL)
        _wait(lambda: len(_children(proc.pid)) == 2 and first[0] not in _children(proc.pid) and _healthy(port))

        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
        assert not any(os.path.exists(f"/proc/{w}") for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sigkilled_supervisor_leaves_no_orphan_workers(pg_url):
    proc, port = _serve(pg_url)
    try:
        _wait(lambda: _healthy(port) and len(_children(proc.pid)) == 2)
        workers = _children(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    _wait(lambda: not any(os.path.exists(f"/proc/{w}") for w in workers), timeout=40)
    assert not _healthy(port)
