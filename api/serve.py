"""`editloop serve --workers N`: N uvicorn processes, each listening on its own SO_REUSEPORT socket.

uvicorn's own multi-worker mode binds one socket in the parent and shares it: every worker is woken for each new
connection, and asyncio accepts all the pending ones at once, so a handful of keep-alive clients (an editor fleet behind
a proxy, a benchmark) often lands on one worker while the other idles (benchmarks/README.md, ingest). With a socket per
worker and SO_REUSEPORT, Linux spreads connections over the workers by hash. Where the kernel has no SO_REUSEPORT,
uvicorn's own mode is used.

The parent only supervises: a worker that dies is started again (a SIGKILLed worker loses nothing acknowledged:
ingest answers after its commit), and SIGINT or SIGTERM stops them all (each finishes its requests and folds)."""

import atexit
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any

from core import logs

APP = "api.serve:create_logged_app"
# uvicorn's access log stays off: api/observe.py writes one line per request, with its id, route and key hint.
UVICORN = {"factory": True, "log_level": "info", "access_log": False, "log_config": logs.log_config()}


def create_logged_app() -> Any:
    """The app, in a process whose logs go out as `EDITLOOP_LOG_FORMAT` says (JSON lines by default)."""
    from api.app import create_app
    from core.settings import get_settings

    settings = get_settings()
    logs.setup(settings.log_format)
    return create_app(settings)


def _multiprocess_metrics(workers: int) -> None:
    """Several processes: prometheus-client keeps each one's metrics in files of a directory they share, and
    /metrics adds them up. Set before a worker imports it; removed with the parent."""
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = tempfile.mkdtemp(prefix="editloop-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        atexit.register(shutil.rmtree, path, True)


def reuseport_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port) that other processes may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)  # uvicorn's default backlog
    sock.set_inheritable(True)
    return sock


def _die_with(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (a SIGKILLed supervisor leaves no orphan
    workers holding the port). Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(0)


def _worker(host: str, port: int, parent: int) -> None:
    import uvicorn

    _die_with(parent)
    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(APP, **UVICORN))  # type: ignore[arg-type]
    server.run(sockets=[sock])


def run(host: str, port: int, workers: int) -> None:
    """Serve with `workers` processes until SIGINT or SIGTERM."""
    import uvicorn

    _multiprocess_metrics(workers)
    if workers <= 1 or not reuseport_supported():
        uvicorn.run(APP, host=host, port=port, workers=workers, **UVICORN)  # type: ignore[arg-type]
        return
    listen(host, port).close()  # fail here, in the parent, if the address is taken or not ours to bind
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start() -> Any:
        process = context.Process(target=_worker, args=(host, port, os.getpid()), daemon=False)
        process.start()
        return process

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    processes = [start() for _ in range(workers)]
    print(f"{workers} workers on {host}:{port}, a SO_REUSEPORT socket each: pids {[p.pid for p in processes]}")
    try:
        while not stop.wait(0.5):
            for i, process in enumerate(processes):
                if not process.is_alive():
                    print(f"worker {process.pid} exited ({process.exitcode}); starting another", file=sys.stderr)
                    processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
