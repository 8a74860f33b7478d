"""Service layer for snapshots, restore and forks (the only writer of Snapshot rows).

Snapshots are internal qcow2 snapshots taken by libvirt: with the guest's memory while the
sandbox runs (restore resumes the running guest, its processes included), disk-only while it
is stopped. A fork is a new sandbox whose overlay starts from another sandbox's snapshot."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from core.conf import vsb
from core.errors import Conflict, InvalidInput, NotFound

from . import lifecycle, tasks
from .choices import OperationKind, SandboxState, SnapshotStatus
from .models import Operation, Sandbox, Snapshot, snapshot_name_validator
from .services import enqueue, new_operation

SNAPSHOT_DEADLINE = 600


def _validate_name(name: str) -> None:
    try:
        snapshot_name_validator(name)
    except Exception:  # noqa: BLE001 - Django's ValidationError; the message says what is allowed
        raise InvalidInput.field(
            "name", "1-64 letters, digits and . _ -, starting with a letter or digit."
        ) from None


def get_snapshot(sandbox: Sandbox, name: str) -> Snapshot:
    snap = Snapshot.objects.filter(sandbox=sandbox, name=name).first()
    if snap is None:
        known = ", ".join(sandbox.snapshots.values_list("name", flat=True)) or "none"
        raise NotFound(f"Sandbox {sandbox.name} has no snapshot {name!r} (known: {known}).")
    return snap


def create_snapshot(
    sandbox: Sandbox, user, *, name: str, description: str = "", disk_only: bool = False
) -> Operation:
    """Queue a snapshot. The sandbox keeps running (QEMU pauses it for a fraction of a second)."""
    _validate_name(name)
    if sandbox.state not in (SandboxState.READY, SandboxState.STOPPED):
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; snapshots need it ready or stopped.",
            code="invalid_state",
        )
    if disk_only and sandbox.state == SandboxState.READY:
        raise InvalidInput.field(
            "disk_only",
            "a disk-only snapshot needs a stopped sandbox (internal snapshots of a running "
            "guest include its memory); stop it first, or omit disk_only.",
        )
    try:
        with transaction.atomic():
            snap = Snapshot.objects.create(sandbox=sandbox, name=name, description=description)
            op = new_operation(
                OperationKind.SNAPSHOT, sandbox, user, deadline_seconds=SNAPSHOT_DEADLINE, name=name
            )
            Operation.objects.filter(pk=op.pk).update(snapshot=snap)
            enqueue(tasks.snapshot_sandbox, sandbox.host, str(op.pk))
    except IntegrityError:
        raise Conflict(
            f"Sandbox {sandbox.name} already has a snapshot named {name!r}.", code="duplicate"
        ) from None
    op.snapshot = snap
    return op


def restore_snapshot(sandbox: Sandbox, user, name: str) -> Operation:
    """Return the sandbox to the snapshot: running with its memory, or stopped."""
    snap = get_snapshot(sandbox, name)
    if snap.status != SnapshotStatus.READY:
        raise Conflict(f"Snapshot {name!r} is {snap.status}, not ready.", code="invalid_state")
    with transaction.atomic():
        if not lifecycle.transition(sandbox.pk, SandboxState.RESTORING):
            sandbox.refresh_from_db(fields=["state"])
            raise Conflict(
                f"Sandbox {sandbox.name} is {sandbox.state}; cannot restore it now.",
                code="invalid_state",
            )
        sandbox.refresh_from_db()
        op = new_operation(
            OperationKind.RESTORE,
            sandbox,
            user,
            deadline_seconds=vsb("READY_TIMEOUT_SECONDS") + 120,
            name=name,
        )
        Operation.objects.filter(pk=op.pk).update(snapshot=snap)
        enqueue(tasks.restore_snapshot, sandbox.host, str(op.pk))
    op.snapshot = snap
    return op


def delete_snapshot(sandbox: Sandbox, user, name: str) -> Operation:
    snap = get_snapshot(sandbox, name)
    if sandbox.state in (SandboxState.DESTROYING, SandboxState.DESTROYED):
        raise Conflict(f"Sandbox {sandbox.name} is {sandbox.state}.", code="invalid_state")
    with transaction.atomic():
        updated = Snapshot.objects.filter(
            pk=snap.pk, status__in=[SnapshotStatus.READY, SnapshotStatus.FAILED]
        ).update(status=SnapshotStatus.DELETING)
        if not updated:
            raise Conflict(f"Snapshot {name!r} is {snap.status}.", code="invalid_state")
        op = new_operation(
            OperationKind.DELETE_SNAPSHOT,
            sandbox,
            user,
            deadline_seconds=SNAPSHOT_DEADLINE,
            name=name,
        )
        Operation.objects.filter(pk=op.pk).update(snapshot=snap)
        enqueue(tasks.delete_snapshot, sandbox.host, str(op.pk))
    return op


def fork_origin(owner, from_sandbox, from_snapshot: str) -> Snapshot:
    """The ready snapshot a fork starts from; the origin must be the caller's own."""
    from .services import visible_sandboxes

    origin = visible_sandboxes(owner).filter(pk=from_sandbox).first() if from_sandbox else None
    if origin is None:
        raise InvalidInput.field("from_sandbox", f"no sandbox {from_sandbox} of yours.")
    if origin.state == SandboxState.DESTROYED:
        raise InvalidInput.field("from_sandbox", f"sandbox {origin.name} is destroyed.")
    snap = Snapshot.objects.filter(sandbox=origin, name=from_snapshot).first()
    if snap is None or snap.status != SnapshotStatus.READY:
        raise InvalidInput.field(
            "from_snapshot", f"sandbox {origin.name} has no ready snapshot {from_snapshot!r}."
        )
    return snap
