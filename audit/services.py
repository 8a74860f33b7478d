"""The one way to write the audit trail, and the check that it was not rewritten."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from . import chain
from .context import current
from .models import AuditEvent, AuditHead

log = logging.getLogger(__name__)

SYSTEM = "system"


def actor_of(user) -> str:
    if user is None or not getattr(user, "is_authenticated", False):
        return "anonymous"
    return f"user:{user.get_username()}"


def _normal_ip(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def record(
    verb: str,
    *,
    user=None,
    actor: str | None = None,
    target=None,
    target_type: str = "",
    target_id: str = "",
    sandbox_id=None,
    agent: str = "",
    data: dict | None = None,
) -> AuditEvent:
    """Append one event. `target` may be a model instance (its class name and pk are used).
    Runs inside the caller's transaction when there is one, so the event and the change it
    describes commit or roll back together."""
    if target is not None:
        target_type = target_type or type(target).__name__.lower()
        target_id = target_id or str(target.pk)
        if sandbox_id is None and type(target).__name__ == "Sandbox":
            sandbox_id = target.pk
        if sandbox_id is None and hasattr(target, "sandbox_id"):
            sandbox_id = target.sandbox_id
        if not agent and hasattr(target, "agent_id") and isinstance(target.agent_id, str):
            agent = target.agent_id
    ctx = current.get()
    fields = {
        "actor": actor or (actor_of(user) if user is not None else SYSTEM),
        "actor_user_id": user.pk if user is not None and user.is_authenticated else None,
        "source_ip": _normal_ip(ctx.source_ip),
        "request_id": ctx.request_id,
        "verb": verb,
        "target_type": target_type,
        "target_id": str(target_id),
        "sandbox_id": sandbox_id,
        "agent": agent or "",
        # Through JSON and back, so what is hashed is exactly what the database returns.
        "data": json.loads(json.dumps(data or {}, default=str)),
    }
    with transaction.atomic():
        head = AuditHead.objects.select_for_update().filter(pk=1).first()
        if head is None:  # the first event ever (or after a flush)
            AuditHead.objects.get_or_create(pk=1)
            head = AuditHead.objects.select_for_update().get(pk=1)
        fields["seq"] = head.seq + 1
        fields["created_at"] = timezone.now()
        digest = chain.event_hash(head.hash, fields)
        event = AuditEvent.objects.create(prev_hash=head.hash, hash=digest, **fields)
        AuditHead.objects.filter(pk=1).update(seq=fields["seq"], hash=digest)
    return event


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str = ""


def _fields_of(event: AuditEvent) -> dict:
    return {name: getattr(event, name) for name in chain.HASHED_FIELDS}


def verify(batch: int = 2000) -> Verdict:
    """Walk the whole chain in order. The first event whose stored hash does not match its
    contents, whose prev_hash is not the hash before it, or whose seq skips, is the break."""
    prev_hash = chain.GENESIS
    expected_seq = 1
    checked = 0
    for event in _iterate(batch):
        if event.seq != expected_seq:
            return Verdict(
                False,
                checked,
                expected_seq,
                f"event #{expected_seq} is missing (next is #{event.seq})",
            )
        if event.prev_hash != prev_hash:
            return Verdict(
                False, checked, event.seq, f"event #{event.seq} does not follow the event before it"
            )
        if chain.event_hash(prev_hash, _fields_of(event)) != event.hash:
            return Verdict(
                False, checked, event.seq, f"event #{event.seq} was changed after it was written"
            )
        prev_hash = event.hash
        expected_seq += 1
        checked += 1
    head = AuditHead.objects.filter(pk=1).first()
    if head is not None and head.seq != checked:
        return Verdict(
            False,
            checked,
            checked + 1,
            f"the chain head says {head.seq} events but {checked} remain: the last ones were removed",
        )
    if head is not None and checked and head.hash != prev_hash:
        return Verdict(False, checked, checked, f"event #{checked} does not match the chain head")
    return Verdict(True, checked)


def _iterate(batch: int) -> Iterator[AuditEvent]:
    last = 0
    while True:
        page = list(AuditEvent.objects.filter(seq__gt=last).order_by("seq")[:batch])
        if not page:
            return
        yield from page
        last = page[-1].seq
