"""Exceptions that carry the server's error.

Every error the server sends has one shape, ``{"error": {"code", "message", "fields"}}``;
the exception keeps all of it plus the HTTP status, so callers can branch on ``code`` (stable)
and show ``message`` (for people) or ``fields`` (which input was wrong).
"""

from __future__ import annotations

import re
from typing import Any


class VirshSandboxError(Exception):
    """An error answer from the server (or no answer at all, see ``TransportError``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        fields: dict[str, list[str]] | None = None,
        method: str = "",
        url: str = "",
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.fields = fields or {}
        self.method = method
        self.url = url
        self.body = body

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}{where}"


class ValidationError(VirshSandboxError):
    """400: the request was refused; ``fields`` names the input at fault."""


class AuthError(VirshSandboxError):
    """401/403: no key, a wrong or revoked key, or not allowed."""


class NotFound(VirshSandboxError):
    """404: no such object, or it belongs to another agent (the server does not tell)."""


class Conflict(VirshSandboxError):
    """409: the object is in the wrong state for this (e.g. a command on a stopped sandbox)."""


class RateLimited(VirshSandboxError):
    """429: not now, nothing was done. ``code`` ``throttled``: the key's request rate (the
    client retries it, after the server's Retry-After); ``quota_exceeded``: as many commands of
    this agent run as its quota allows. A 409 ``quota_exceeded`` (a ``Conflict``) is a count
    quota: free something first. The message names the quota, its limit and the usage."""


class ServerError(VirshSandboxError):
    """5xx: the server (or a slow step it waited for) failed; see ``code``."""


class OperationFailed(VirshSandboxError):
    """A slow step (create, snapshot, restore, ...) ended ``failed`` or ``errored``."""

    def __init__(self, message: str, *, operation: Any = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.operation = operation


class TransportError(VirshSandboxError):
    """The server could not be reached, or the connection broke before an answer."""


class WaitTimeout(VirshSandboxError):
    """A client-side wait (for an operation or a streamed command) ran out of time."""


def error_for_status(status: int) -> type[VirshSandboxError]:
    if status == 400:
        return ValidationError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    if status == 429:
        return RateLimited
    if status >= 500:
        return ServerError
    return VirshSandboxError


def from_response(status: int, body: Any, *, method: str = "", url: str = "") -> VirshSandboxError:
    """Build the exception for an error answer. Bodies in the server's shape give code,
    message and fields; anything else (a proxy's HTML page) keeps its text as the message."""
    code, message, fields = f"http_{status}", "", {}
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = str(err.get("code") or code)
        message = str(err.get("message") or "")
        raw_fields = err.get("fields") or {}
        if isinstance(raw_fields, dict):
            fields = {
                str(k): [str(m) for m in (v if isinstance(v, list) else [v])]
                for k, v in raw_fields.items()
            }
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    elif status == 404:
        # Not the API's own 404 (which names the missing object): the path is not routed,
        # typically a feature this server does not have yet.
        code = "no_route"
        message = f"the server has no route {method} {url} (HTTP 404)"
    elif isinstance(body, str):
        text = body.strip()
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        message = title.group(1).strip() if title else text[:500]
    if not message:
        message = f"HTTP {status}"
    cls = error_for_status(status)
    return cls(message, status=status, code=code, fields=fields, method=method, url=url, body=body)


def is_server_error_shape(body: Any) -> bool:
    """True when the body is the server's own error document (not a proxy's page)."""
    return isinstance(body, dict) and isinstance(body.get("error"), dict)
