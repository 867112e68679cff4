"""The one place where domain errors become HTTP status codes. Bodies say what was wrong and where."""

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from core.errors import (
    Conflict,
    EditloopError,
    InvalidInput,
    MalformedBody,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    UpstreamTimeout,
    UpstreamUnavailable,
)

STATUS: list[tuple[type[EditloopError], int]] = [
    (PayloadTooLarge, 413),
    (MalformedBody, 400),
    (InvalidInput, 422),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (Conflict, 409),
    (UpstreamTimeout, 504),
    (UpstreamUnavailable, 502),
]


def status_of(exc: EditloopError) -> int:
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EditloopError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=status_of(exc), headers=headers)


def _request_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    detail = f"{field}: {str(err['msg']).removeprefix('Value error, ')}"
    return JSONResponse({"error": InvalidInput.code, "detail": detail}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's body limit (the app's max_body_size) refuses with a bare 413: give it our code and the figures."""
    assert isinstance(exc, HTTPException)
    if exc.status_code != 413:
        return await http_exception_handler(request, exc)
    limit = request.app.state.settings.max_request_bytes
    declared = request.headers.get("content-length")
    detail = (
        f"body: {declared} bytes exceeds the limit of {limit} bytes"
        if declared and declared.isdigit()
        else f"body: more than the limit of {limit} bytes"
    )
    return JSONResponse({"error": PayloadTooLarge.code, "detail": detail}, status_code=413)


def install(app: FastAPI) -> None:
    app.add_exception_handler(EditloopError, _domain_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(HTTPException, _http_error)
