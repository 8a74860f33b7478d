"""The request an audit event belongs to (id, source IP, user), carried in a contextvar so
services deep below a view, sync or async, record it without being handed the request."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    request_id: str = ""
    source_ip: str | None = None


EMPTY = RequestContext()  # frozen: safe to share as the default

current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar(
    "audit_request",
    default=EMPTY,  # noqa: B039
)
