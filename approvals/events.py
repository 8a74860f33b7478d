"""Approval events, sent only after the transaction commits: to the `approvals` channel-layer
group (every operator's socket) and, once decided, to the asks waiting on the request
(a `core.wakeups` wake-up of kind WAKEUP_KIND carrying the request's final form)."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from core import wakeups

log = logging.getLogger(__name__)

OPERATORS_GROUP = "approvals"
WAKEUP_KIND = "approval"


def _send(kind: str, body: dict, seq: int) -> None:
    if body["status"] != "pending":
        try:
            wakeups.publish(body["id"], body, kind=WAKEUP_KIND)
        except Exception:  # noqa: BLE001 - waiters re-read the row every few seconds
            log.warning("could not wake the waiters of %s", body["id"], exc_info=True)
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "approval.event", "event": kind, "seq": seq, "request": body}
    try:
        async_to_sync(layer.group_send)(OPERATORS_GROUP, message)
    except Exception:  # noqa: BLE001 - the row is the truth; waiters re-read it
        log.warning("could not publish approval event %s for %s", kind, body["id"], exc_info=True)


def publish_on_commit(kind: str, body: dict, seq: int) -> None:
    transaction.on_commit(lambda: _send(kind, body, seq))
