#!/usr/bin/env python
"""A minimal, fast OpenAI-compatible server: fixed short completions, answered at once, streamed and not. It plays the
rented model in benchmarks/gateway.py, which measures it directly and through editloop in the same run.

Run:  .venv/bin/python benchmarks/fake_openai.py --port 8100"""

import argparse
import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

PIECES = ["    return", " a", " +", " b\n"]
USAGE = {"prompt_tokens": 12, "completion_tokens": len(PIECES), "total_tokens": 12 + len(PIECES)}


def _sse(data: object) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def completions(request: Request) -> Response:
    body = orjson.loads(await request.body())
    chat = request.url.path.endswith("/chat/completions")
    head = {"id": "cmpl-fake", "created": int(time.time()), "model": body.get("model", "fake")}
    if not body.get("stream"):
        if chat:
            message = {"role": "assistant", "content": "".join(PIECES)}
            choice: dict[str, object] = {"index": 0, "message": message, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": "".join(PIECES), "finish_reason": "stop"}
        kind = "chat.completion" if chat else "text_completion"
        payload = {**head, "object": kind, "choices": [choice], "usage": USAGE}
        return Response(orjson.dumps(payload), media_type="application/json")

    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"index": 0, "delta": {"content": text}} if chat else {"index": 0, "text": text}
        return _sse({**head, "choices": [{**choice, "finish_reason": finish}]})

    async def events():  # type: ignore[no-untyped-def]
        for i, piece in enumerate(PIECES):
            yield chunk(piece, "stop" if i == len(PIECES) - 1 else None)
        if (body.get("stream_options") or {}).get("include_usage"):
            yield _sse({**head, "choices": [], "usage": USAGE})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
app.router.routes.append(Route("/v1/chat/completions", completions, methods=["POST"]))


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
