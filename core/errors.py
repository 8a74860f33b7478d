"""The one error hierarchy of the project, and its one mapping to HTTP.

Every error raised on purpose is an `Error`: it says whether trying again may help
(`transient`) or a person has to act, and carries a stable `code`. Drivers raise
`Error` subclasses of their own (no Django here, so the driver layer may import it);
services raise the `ServiceError` kinds below, which the API, the websocket and the
worker-to-web answers turn into a status with `http_status`, and back with
`from_http_status` (a host worker's answer crosses a process boundary as status + code).
"""

from __future__ import annotations


class Error(Exception):
    """Base of every error the project raises on purpose."""

    code = "error"
    transient = False

    def __init__(
        self, message: str = "", *, code: str | None = None, transient: bool | None = None
    ):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        # A class default fits most cases; an instance may override it when the same kind of
        # failure can be either (e.g. a DNS failure vs a refused port).
        if transient is not None:
            self.transient = transient


class ServiceError(Error):
    """An error for the caller to see: bad input, a refusal, a conflict, a failed step.
    `fields` names the input at fault, as the caller spelled it (`field`: the one field
    whose message is the error's own)."""

    code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        fields: dict[str, list[str]] | None = None,
        field: str = "",
        code: str | None = None,
        transient: bool | None = None,
    ):
        super().__init__(message, code=code, transient=transient)
        self.fields = fields or ({field: [message]} if field else {})


class InvalidInput(ServiceError):
    code = "invalid"

    @classmethod
    def field(cls, name: str, message: str) -> InvalidInput:
        return cls(f"{name}: {message}", fields={name: [message]})


class Forbidden(ServiceError):
    """The caller may see the thing but not do this to it (deciding its own request)."""

    code = "forbidden"


class NotFound(ServiceError):
    """No such thing, or not the caller's: another agent's sandbox is a 404, not a 403."""

    code = "not_found"


class Conflict(ServiceError):
    """The thing is in the wrong state for this, or a name is taken; `code` says which
    (`invalid_state`, `duplicate`, ...)."""

    code = "conflict"


class QuotaExceeded(Conflict):
    """The caller's quota does not allow this: a count of things it holds (README "Limits").
    It must free one first (destroy a sandbox, delete a snapshot); the message names the
    quota, its limit and the current usage."""

    code = "quota_exceeded"


class TooManyRequests(ServiceError):
    """Not now for this caller: a concurrency limit that clears by itself, so waiting helps
    (nothing was done). (Request rates are DRF's throttle: accounts/api/throttling.py.)"""

    code = "too_many_requests"
    transient = True


class TooLarge(ServiceError):
    code = "too_large"  # a body or file over its configured limit


class Unprocessable(ServiceError):
    """Well-formed input the service cannot handle (a name that is not UTF-8)."""

    code = "unprocessable"


class OperationFailed(ServiceError):
    """A slow step failed; its message says why."""

    code = "operation_failed"


class Unavailable(ServiceError):
    """Not now: no worker with room, a port allocation busy. Nothing was done."""

    code = "unavailable"
    transient = True


class OperationTimeout(ServiceError):
    """The answer did not come in time; the work may still finish."""

    code = "timeout"
    transient = True


# The HTTP status of each kind, most specific first when walking a class's MRO.
HTTP_STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 400,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    TooManyRequests: 429,
    Unprocessable: 422,
    OperationFailed: 502,
    Unavailable: 503,
    OperationTimeout: 504,
    ServiceError: 400,
}


def http_status(exc: Exception) -> int:
    """The status of a `ServiceError` kind; 500 for anything else (a bug, or a plain `Error`)."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def from_http_status(status: int, message: str, *, code: str = "", field: str = "") -> ServiceError:
    """The error a status stands for (a host worker's answer, read back on the web side)."""
    kind = next((cls for cls, s in HTTP_STATUS.items() if s == status), ServiceError)
    return kind(message, code=code or None, field=field)
