"""Domain errors. They know nothing about HTTP: `api/errors.py` is the one place that maps them to status codes."""


class EditloopError(Exception):
    code = "error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(EditloopError):
    """The caller sent something we cannot accept; `detail` names the field and the reason."""

    code = "invalid_input"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class Unauthenticated(EditloopError):
    code = "unauthenticated"


class PermissionDenied(EditloopError):
    code = "permission_denied"


class NotFound(EditloopError):
    code = "not_found"


class Conflict(EditloopError):
    code = "conflict"


class MalformedBody(InvalidInput):
    """The body is not JSON (or not UTF-8): nothing in it can be read."""

    code = "invalid_json"


class UpstreamUnavailable(EditloopError):
    """The project's upstream provider failed (refused, errored or dropped the connection) after its retries."""

    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamUnavailable):
    """The project's upstream provider did not answer in time."""

    code = "upstream_timeout"
