"""Errors the service layer raises for callers to show: each has an HTTP status, a stable
code and, for bad input, the fields at fault."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "invalid"

    def __init__(
        self, message: str, *, fields: dict[str, list[str]] | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class InvalidInput(ServiceError):
    status_code = 400
    code = "invalid"

    @classmethod
    def field(cls, name: str, message: str) -> InvalidInput:
        return cls(f"{name}: {message}", fields={name: [message]})


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


class OperationTimeout(ServiceError):
    status_code = 504
    code = "timeout"
