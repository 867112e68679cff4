"""A fault-injecting HTTP proxy on loopback, in front of a real OpenAI-compatible server.

Each request takes the next fault from `faults` (none left: it passes through): `429` (with Retry-After), `503`,
`hang` (reads the request and never answers), `drop` (passes the request on and cuts the connection once the first
streamed `data:` has gone back). Every answer closes its connection, so one request is one connection."""

import asyncio
import threading
from collections import deque


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: deque[str] = deque()
        self.seen: list[str] = []  # what each request got
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0)
        body = await reader.readexactly(length)
        fault = self.faults.popleft() if self.faults else "pass"
        self.seen.append(fault)
        if fault in ("429", "503"):
            reason = "Too Many Requests" if fault == "429" else "Service Unavailable"
            payload = b'{"error": {"message": "injected ' + fault.encode() + b'"}}'
            extra = "retry-after: 1\r\n" if fault == "429" else ""
            writer.write(
                f"HTTP/1.1 {fault} {reason}\r\ncontent-type: application/json\r\n{extra}"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            writer.close()
            return
        if fault == "hang":
            await reader.read()  # until the client gives up
            writer.close()
            return
        kept = [h for h in lines[1:] if h and not h.lower().startswith("connection:")]
        request = "\r\n".join([lines[0], *kept, "connection: close", "", ""]).encode() + body
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        up_writer.write(request)
        await up_writer.drain()
        try:
            sent = b""
            while data := await up_reader.read(65536):
                if fault == "drop":
                    sent += data
                    start = sent.find(b"data:")
                    end = sent.find(b"\n\n", start) if start >= 0 else -1
                    if end >= 0:  # mid-stream: the first event goes out, the rest never will
                        writer.write(sent[: end + 2])
                        await writer.drain()
                        writer.transport.abort()
                        return
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            up_writer.close()
        writer.close()
