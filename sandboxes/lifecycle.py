"""The sandbox lifecycle: which state may follow which, and one race-free way to move.

    queued → requested → provisioning → booting → waiting_for_ip → ready ⇄ (stopping →) stopped
    stopped | error → queued → booting (a start waiting for a boot slot: services.admit_boots)
    ready → stopped (the reconcile found the domain shut off: a host reboot)
    ready ⇄ paused → hibernated → ready (idle: sandboxes/idle.py; woken by any use)
    paused | hibernated → stopping | restoring | destroying (they work from there too)
    ready | stopped | error → restoring → waiting_for_ip (memory snapshot) | stopped
    any → destroying → destroyed;  transitional → error

A transition is a conditional UPDATE (compare-and-set): of many workers on many hosts that
try the same move, exactly one sees `True`.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from audit import services as audit

from .choices import SandboxState as S
from .models import Sandbox

ALLOWED: dict[str, set[str]] = {
    # queued: a create (→ requested) or a start (→ booting) waiting for a boot slot.
    S.QUEUED: {S.REQUESTED, S.BOOTING, S.DESTROYING, S.ERROR},
    S.REQUESTED: {S.PROVISIONING, S.DESTROYING, S.ERROR},
    S.PROVISIONING: {S.BOOTING, S.STOPPED, S.DESTROYING, S.ERROR},
    S.BOOTING: {S.WAITING_FOR_IP, S.STOPPING, S.DESTROYING, S.ERROR},
    S.WAITING_FOR_IP: {S.READY, S.STOPPING, S.DESTROYING, S.ERROR},
    # ready → stopped directly: the reconcile found the domain shut off (host reboot).
    S.READY: {
        S.STOPPING,
        S.STOPPED,
        S.BOOTING,
        S.RESTORING,
        S.DESTROYING,
        S.ERROR,
        S.PAUSED,
        S.HIBERNATED,
    },
    # paused → stopped / hibernated → stopped: the reconcile found the domain shut off.
    S.PAUSED: {
        S.READY,
        S.HIBERNATED,
        S.STOPPING,
        S.STOPPED,
        S.RESTORING,
        S.DESTROYING,
        S.ERROR,
    },
    S.HIBERNATED: {S.READY, S.STOPPING, S.STOPPED, S.RESTORING, S.DESTROYING, S.ERROR},
    S.RESTORING: {S.WAITING_FOR_IP, S.STOPPED, S.DESTROYING, S.ERROR},
    S.STOPPING: {S.STOPPED, S.DESTROYING, S.ERROR},
    S.STOPPED: {S.QUEUED, S.BOOTING, S.RESTORING, S.DESTROYING, S.ERROR},
    S.ERROR: {S.DESTROYING, S.QUEUED, S.BOOTING, S.STOPPING, S.RESTORING},
    S.DESTROYING: {S.DESTROYED, S.ERROR},
    S.DESTROYED: set(),
}


class IllegalTransition(ValueError):
    pass


def sources_for(target: str) -> list[str]:
    return [state for state, targets in ALLOWED.items() if target in targets]


def transition(sandbox_id, target: str, *, expected: Iterable[str] | None = None, **fields) -> bool:
    """Move the sandbox to `target` if it is in one of `expected` (default: every state
    allowed to reach target). Returns whether this caller made the move."""
    allowed_from = sources_for(target)
    expected = list(expected) if expected is not None else allowed_from
    illegal = set(expected) - set(allowed_from)
    if illegal:
        raise IllegalTransition(f"{sorted(illegal)} cannot move to {target}")
    now = timezone.now()
    fields.setdefault("error", "" if target != S.ERROR else fields.get("error", ""))
    with transaction.atomic():
        updated = Sandbox.objects.filter(pk=sandbox_id, state__in=expected).update(
            state=target, state_changed_at=now, updated_at=now, **fields
        )
        if updated == 1:
            data = {"to": target}
            if fields.get("error"):
                data["error"] = fields["error"][:500]
            # The agent too, so that `?agent=` finds a sandbox's whole life (one read, in
            # the transaction, only when the move happened).
            agent = Sandbox.objects.filter(pk=sandbox_id).values_list("agent_id", flat=True)
            audit.record(
                "sandbox.transition",
                target_type="sandbox",
                target_id=str(sandbox_id),
                sandbox_id=sandbox_id,
                agent=agent.first() or "",
                data=data,
            )
    return updated == 1
