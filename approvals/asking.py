"""The blocking ask, shared by the ASGI endpoint (no thread held while waiting) and the
Django view that documents the route and serves it under WSGI."""

from __future__ import annotations

from channels.db import database_sync_to_async

from . import services
from .waiting import wait_for_decision


@database_sync_to_async
def _create(user, data: dict):
    req, created = services.create_request(user, **data)
    return req.id, req.expires_at, services.as_dict(req), created


async def ask(user, data: dict) -> dict:
    """Create (or, with a known idempotency key, pick up) a request and return it once it
    is decided, cancelled or expired."""
    request_id, expires_at, body, _created = await _create(user, data)
    if body["status"] != "pending":
        return body
    return await wait_for_decision(request_id, expires_at)
