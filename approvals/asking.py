"""The blocking ask, shared by the ASGI endpoint (no thread held while waiting) and the
Django view that documents the route and serves it under WSGI.

A waiting ask is a coroutine parked in `core.wakeups.await_until` on the process's one Redis
subscription; the decision's wake-up carries the request's final form (events.py). It
re-reads the row every RECHECK_SECONDS in case a wake-up was lost (the row is the truth:
pub/sub does not keep messages for a listener that was reconnecting), and expires the
request itself when its time is up."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.utils import timezone

from core import wakeups

from . import services
from .choices import ApprovalStatus
from .events import WAKEUP_KIND
from .models import ApprovalRequest

RECHECK_SECONDS = 5.0


@database_sync_to_async
def _create(user, data: dict):
    req, created = services.create_request(user, **data)
    return req.id, req.expires_at, services.as_dict(req), created


@database_sync_to_async
def _read(request_id, *, expire: bool = False) -> dict:
    if expire:
        services.expire(request_id)
    req = ApprovalRequest.objects.select_related("requested_by", "decided_by").get(pk=request_id)
    return services.as_dict(req)


def _decided(body: dict) -> bool:
    return body["status"] != ApprovalStatus.PENDING


async def wait_for_decision(request_id, expires_at) -> dict:
    """The request once it is decided, cancelled or expired (expiring it at `expires_at`)."""
    body = await wakeups.await_until(
        lambda: _read(request_id),
        _decided,
        key=str(request_id),
        kind=WAKEUP_KIND,
        timeout=(expires_at - timezone.now()).total_seconds(),
        recheck=RECHECK_SECONDS,
        woken=dict,
    )
    return body if _decided(body) else await _read(request_id, expire=True)


async def ask(user, data: dict) -> dict:
    """Create (or, with a known idempotency key, pick up) a request and return it once it
    is decided, cancelled or expired."""
    request_id, expires_at, body, _created = await _create(user, data)
    if _decided(body):
        return body
    return await wait_for_decision(request_id, expires_at)
