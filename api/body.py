"""Reading request bodies with a size limit that holds before the body is read whole."""

from typing import Any

import orjson
from fastapi import Request

from api.edge import json_problem
from core.errors import InvalidInput, MalformedBody, PayloadTooLarge


async def read_json(request: Request, limit: int, storable: bool = True) -> Any:
    """The body as parsed JSON, refused past `limit` bytes. With `storable`, also refused where Postgres could not
    store a value (api.edge.json_problem); event batches pass False: they refuse such an event alone."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("content-length: not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"body: {size} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # chunked bodies carry no length: count as they come
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body: more than the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"body: not valid JSON in UTF-8 ({exc})") from None
    problem = json_problem(body) if storable else None
    if problem is not None:
        raise InvalidInput(problem)
    return body
