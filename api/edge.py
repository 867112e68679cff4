"""What every request's input must satisfy before a route sees it, checked once for all routes.

Postgres refuses two things that a well-typed request can still carry: integers beyond its bigint, and NUL
characters in text. Left to the database they surface as 500s; here they become a 422 that names the parameter
(`query.limit`, `body.config.max_steps`). `check_request` is a dependency of the whole app (api/app.py), so every
route gets it; the JSON bodies that routes read themselves go through `api.body.read_json`, which calls
`json_problem`."""

import types
import typing
import weakref
from collections.abc import Iterator
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
_NUL = "\x00"
# Each route's parameters, found once per route (weakly held: apps made in tests come and go).
_DECLARED: "weakref.WeakKeyDictionary[APIRoute, list[tuple[str, str, bool]]]" = weakref.WeakKeyDictionary()


async def check_request(request: Request) -> None:
    """Refuse the request with a 422 if a declared parameter or its JSON body holds what Postgres cannot store."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    parameters = _DECLARED.get(route)
    if parameters is None:
        parameters = _DECLARED[route] = _parameters(route.dependant)
    problem = _parameter_problem(request, parameters)
    if problem is None and route.body_field is not None and _json_body(request):
        # FastAPI parsed the body before solving dependencies; Starlette keeps the result on the request.
        problem = json_problem(await _json_or_none(request))
    if problem is not None:
        location, _, message = problem.partition(": ")
        raise RequestValidationError([{"loc": tuple(location.split(".")), "msg": message, "type": "value_error"}])


def json_problem(value: Any, where: str = "body") -> str | None:
    """A place in a parsed JSON value that Postgres cannot store, as `where.path: why`, or None."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if _NUL in item:
                return f"{path}: contains a NUL character, which text cannot hold"
        elif isinstance(item, bool | float) or item is None:
            continue
        elif isinstance(item, int):
            if not BIGINT_MIN <= item <= BIGINT_MAX:
                return f"{path}: {item} is out of range (a 64-bit integer)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if _NUL in key:
                    return f"{path}: a key contains a NUL character, which text cannot hold"
                stack.append((f"{path}.{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def _parameter_problem(request: Request, parameters: list[tuple[str, str, bool]]) -> str | None:
    for location, name, integer in parameters:
        for value in _values(request, location, name):
            if _NUL in value:
                return f"{location}.{name}: contains a NUL character, which text cannot hold"
            if integer and _out_of_range(value):
                return f"{location}.{name}: {value.strip()} is out of range (a 64-bit integer)"
    return None


def _values(request: Request, location: str, name: str) -> list[str]:
    if location == "query":
        return request.query_params.getlist(name)
    value = request.path_params.get(name)
    return [value] if isinstance(value, str) else []


def _out_of_range(value: str) -> bool:
    try:
        number = int(value)
    except ValueError:
        return False  # not an integer at all: FastAPI's own validation says so
    return not BIGINT_MIN <= number <= BIGINT_MAX


def _json_body(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return request.method in ("POST", "PUT", "PATCH") and ("json" in content_type or not content_type)


async def _json_or_none(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None  # malformed: FastAPI's own validation answers it


def _parameters(dependant: Dependant) -> list[tuple[str, str, bool]]:
    """(location, name as sent, whether it is an integer) of every query and path parameter that the route and its
    dependencies declare. Headers need no check: HTTP parsers refuse a NUL in them."""
    found: dict[tuple[str, str], bool] = {}
    for location, field in _fields(dependant):
        found[location, field.alias or field.name] = _is_int(field.field_info.annotation)
    return [(location, name, integer) for (location, name), integer in found.items()]


def _fields(dependant: Dependant) -> Iterator[tuple[str, Any]]:
    yield from (("query", f) for f in dependant.query_params)
    yield from (("path", f) for f in dependant.path_params)
    for sub in dependant.dependencies:
        yield from _fields(sub)


def _is_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_int(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        return any(_is_int(arg) for arg in typing.get_args(annotation))
    return False
