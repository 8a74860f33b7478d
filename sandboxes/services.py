"""The sandbox service layer: the only writer of hosts, source VMs, sandboxes, operations,
commands and snapshots (a sandbox's state moves through `lifecycle.transition`, the one
compare-and-set). Views, admin, management commands and tasks call these functions; tasks
are enqueued only after the surrounding transaction commits, on the queue of the sandbox's
own host.

Snapshots are internal qcow2 snapshots taken by libvirt: with the guest's memory while the
sandbox runs (restore resumes the running guest, its processes included), disk-only while it
is stopped. A fork is a new sandbox whose overlay starts from another sandbox's snapshot."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Sum
from django.utils import timezone

from audit import services as audit
from audit.chain import sha256_text
from core import queues, wakeups
from core.conf import vsb
from core.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OperationTimeout,
    Unavailable,
)
from egress import services as egress

from . import capacity, lifecycle, quotas, tasks
from .choices import (
    IDLE_STATES,
    LIFECYCLE_KINDS,
    WAKEABLE_STATES,
    CommandStatus,
    NetworkMode,
    OperationKind,
    OperationStatus,
    SandboxState,
    SnapshotStatus,
    SourceKind,
)
from .models import Command, Host, Operation, Sandbox, Snapshot, SourceVM, snapshot_name_validator
from .remote.ssh import MAX_COMMAND_BYTES

log = logging.getLogger(__name__)

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- Hosts ---------------------------------------------------------------------------------


def ensure_host(name: str | None = None, libvirt_uri: str | None = None) -> Host:
    """The Host row for `name` (default: this machine), created on first use."""
    name = name or vsb("HOST_NAME")
    host, _ = Host.objects.get_or_create(
        name=name, defaults={"libvirt_uri": libvirt_uri or vsb("LIBVIRT_URI")}
    )
    return host


def record_host_setup(host: Host, *, sandbox_dir: str, port_range: tuple[int, int]) -> None:
    """What the host's worker found in its own settings at its start (`Host.sandbox_dir`,
    `Host.port_range`): creates placed on it take their workdir and port from these."""
    Host.objects.filter(pk=host.pk).update(
        sandbox_dir=sandbox_dir, port_range_start=port_range[0], port_range_end=port_range[1]
    )
    host.sandbox_dir = sandbox_dir
    host.port_range_start, host.port_range_end = port_range


def record_heartbeat(
    host: Host, domain_type: str = "", resources: dict | None = None, boot_slots: int = 0
) -> None:
    """The worker's beat: it is alive, and (when given) its domain type, the figures it
    measured (`Host.resources`, the shape in sandboxes/capacity.py) and its boot slots
    (`boot_slots_for`)."""
    fields = {"last_heartbeat": timezone.now()}
    if domain_type:
        fields["domain_type"] = domain_type
    if resources is not None:
        fields["resources"] = resources
    if boot_slots:
        fields["boot_slots"] = boot_slots
    Host.objects.filter(pk=host.pk).update(**fields)


def require_live_host(host: Host, sandbox: Sandbox | None = None) -> None:
    """Refuse (503 `host_unavailable`, naming the host) new work for `host` (for `sandbox`
    on it) while it has no live worker: the work would wait in the host's queue until the
    worker is back, and the caller with it. Work already sent waits for the worker, which
    resumes it when it starts (`worker.recover`)."""
    reason = host.unavailable_reason()
    if reason:
        what = f"Sandbox {sandbox.name}" if sandbox is not None else f"Host {host.name}"
        raise Unavailable(
            f"{what} is unavailable: {reason}. Try again once its worker is back; "
            "meanwhile a destroy is accepted and new sandboxes go to other hosts.",
            code="host_unavailable",
        )


def host_sandbox_names(host: Host) -> list[str]:
    """The domain names of the host's sandboxes that are not destroyed (the heartbeat counts
    only these among the domains of a libvirtd other hosts may share)."""
    return list(
        Sandbox.objects.filter(host=host)
        .exclude(state=SandboxState.DESTROYED)
        .values_list("name", flat=True)
    )


def overcommit_ratio(host: Host) -> float:
    """The host's own overcommit ratio, else VSB_MEMORY_OVERCOMMIT."""
    if host.memory_overcommit is not None:
        return host.memory_overcommit
    return vsb("MEMORY_OVERCOMMIT")


def _memory_holders(hosts):
    return Sandbox.objects.filter(host__in=hosts).exclude(state__in=capacity.MEMORY_FREE_STATES)


def rooms(hosts: list[Host]) -> dict[int, capacity.HostRoom]:
    """Each host's committed memory and count against its limits (one query)."""
    used = {
        row["host"]: row
        for row in _memory_holders(hosts)
        .values("host")
        .annotate(committed=Sum("memory_mb"), holding=Count("pk"))
    }
    return {
        h.pk: capacity.room_of(
            h.name,
            h.resources,
            ratio=overcommit_ratio(h),
            committed_mb=used.get(h.pk, {}).get("committed") or 0,
            holding=used.get(h.pk, {}).get("holding") or 0,
            cap=h.capacity,
        )
        for h in hosts
    }


def _lock_hosts(hosts: list[Host]) -> list[Host]:
    """The hosts' rows again, locked until the transaction ends (in one order: no deadlock),
    so that two placements at once count each other's sandbox."""
    # FOR NO KEY UPDATE, as admit_boots takes it: a transaction that inserted a row pointing
    # at the host holds a key-share lock on it, which a plain FOR UPDATE would wait for.
    return list(
        Host.objects.select_for_update(no_key=True)
        .filter(pk__in=[h.pk for h in hosts])
        .order_by("pk")
    )


def choose_host(
    source: SourceVM,
    only: Host | None = None,
    *,
    memory_mb: int | None = None,
    lock: bool = False,
) -> Host:
    """The host for a new sandbox of `memory_mb` (default VSB_DEFAULT_MEMORY_MB): among the
    enabled, non-draining hosts with a live worker and room (sandboxes/capacity.py), the one
    with the most free memory, ties by name; else Unavailable naming the hosts and their
    numbers. `only` pins the choice (a fork must live where its origin's disk is), as does a
    source bound to a host. With `lock` (inside a transaction) the candidates' rows stay
    locked until it ends: the caller writes the sandbox before another placement counts."""
    memory_mb = vsb("DEFAULT_MEMORY_MB") if memory_mb is None else memory_mb
    candidates = Host.objects.filter(enabled=True)
    if only is not None:
        candidates = candidates.filter(pk=only.pk)
    elif source.host_id:
        candidates = candidates.filter(pk=source.host_id)
    hosts = list(candidates.order_by("name"))
    if not hosts:
        raise Unavailable("No enabled KVM host can hold this source VM.", code="no_host")
    open_hosts = [h for h in hosts if not h.draining]
    if not open_hosts:
        names = ", ".join(h.name for h in hosts)
        which = f"Hosts {names} are" if len(hosts) > 1 else f"Host {names} is"
        why = "a fork lives on its origin's host" if only is not None else "no host is open"
        raise Unavailable(
            f"{which} draining: no new sandboxes go there ({why}). An operator ends that "
            "with POST /v1/hosts/{name}/undrain.",
            code="draining",
        )
    alive = [h for h in open_hosts if h.is_alive()]
    if not alive:
        raise Unavailable(
            f"No worker serves {open_hosts[0].queue_name}, the lifecycle queue of host "
            f"{open_hosts[0].name} (no heartbeat in the last {vsb('HOST_DEAD_SECONDS'):.0f} s). "
            "Start the host's worker pools "
            "with scripts/run.sh (or one by one: python manage.py worker lifecycle).",
            code="no_worker",
        )
    if lock:
        alive = _lock_hosts(alive)
    host_rooms = list(rooms(alive).values())
    ranked = capacity.rank(host_rooms, memory_mb)
    if not ranked:
        refusals = "; ".join(r.refusal(memory_mb) for r in host_rooms)
        raise Unavailable(
            f"No host has room for a sandbox of {memory_mb} MiB: {refusals}. Destroy or stop "
            "sandboxes, or ask an operator for room.",
            code="capacity",
        )
    return next(h for h in alive if h.name == ranked[0].name)


def check_room(sandbox: Sandbox) -> None:
    """Inside a transaction: the sandbox's host has room for it to hold memory again (a start
    or restore of a stopped sandbox), else Unavailable with the numbers. Locks the host's row
    until the transaction ends, as a placement does. Draining does not matter: the sandbox
    already lives there."""
    host = _lock_hosts([sandbox.host])[0]
    room = rooms([host])[host.pk]
    if not room.fits(sandbox.memory_mb):
        raise Unavailable(
            f"Sandbox {sandbox.name} cannot start now: {room.refusal(sandbox.memory_mb)}. "
            "Stop or destroy another sandbox on that host first.",
            code="capacity",
        )


def host_overviews(hosts=None) -> list[dict]:
    """Each host (default: all) as operators see it (GET /v1/hosts): the row, its limits,
    committed and free memory and its sandboxes counted by state (destroyed left out)."""
    hosts = list(Host.objects.order_by("name") if hosts is None else hosts)
    by_state: dict[int, dict[str, int]] = {h.pk: {} for h in hosts}
    for row in (
        Sandbox.objects.filter(host__in=hosts)
        .exclude(state=SandboxState.DESTROYED)
        .values("host", "state")
        .annotate(n=Count("pk"))
    ):
        by_state[row["host"]][row["state"]] = row["n"]
    host_rooms = rooms(hosts)
    default_mb = vsb("DEFAULT_MEMORY_MB")
    return [
        {
            "host": h,
            "room": host_rooms[h.pk],
            "sandboxes": by_state[h.pk],
            "accepting": h.enabled
            and not h.draining
            and h.is_alive()
            and host_rooms[h.pk].fits(default_mb),
        }
        for h in hosts
    ]


# Operators' view of the fleet (GET /v1/hosts) and their drain switch. Anyone holding
# neither permission is told the routes name nothing (404), as for inventories.
VIEW_HOSTS_PERMISSION = "sandboxes.view_host"
DRAIN_PERMISSION = "sandboxes.drain_host"


def require_host_operator(user, permission: str | None = None, *, what: str = "Not found.") -> None:
    """A 404 for whoever may neither view nor drain hosts (agents); a 403 naming
    `permission` for an operator who lacks that one."""
    if not (
        user
        and user.is_authenticated
        and (user.has_perm(VIEW_HOSTS_PERMISSION) or user.has_perm(DRAIN_PERMISSION))
    ):
        raise NotFound(what)
    if permission and not user.has_perm(permission):
        raise Forbidden(f"This needs the {permission} permission.")


def get_host(name: str) -> Host:
    host = Host.objects.filter(name=name).first()
    if host is None:
        known = ", ".join(Host.objects.values_list("name", flat=True)) or "none"
        raise NotFound(f"No host {name!r} (known: {known}).")
    return host


def set_draining(host: Host, user, draining: bool) -> Host:
    """Drain a host (no new placements; its sandboxes keep working) or end that; audited as
    `host.drain` / `host.undrain`, also when it changed nothing."""
    with transaction.atomic():
        changed = (
            Host.objects.filter(pk=host.pk).exclude(draining=draining).update(draining=draining)
        )
        audit.record(
            "host.drain" if draining else "host.undrain",
            user=user,
            target=host,
            data={"host": host.name, "changed": bool(changed)},
        )
    host.refresh_from_db()
    log.info("host %s %s", host.name, "draining" if draining else "open", extra={"host": host.name})
    return host


def save_host(host: Host) -> Host:
    """An operator's edit of a host (the admin): enabled, draining, count cap, overcommit
    ratio, libvirt URI."""
    host.save()
    return host


def delete_hosts(hosts) -> None:
    """Remove hosts (the admin); one that ever held a sandbox is protected by its rows."""
    hosts.delete()


def enqueue(task, host: Host, *args, countdown: float | None = None) -> None:
    """Send `task` (the task function) to the host's queue for its kind of work once the
    current transaction commits (`core.queues`)."""
    queues.enqueue(task, *args, host=host.name, countdown=countdown)


# --- Source VMs ----------------------------------------------------------------------------


def register_image(name: str, image_dir: Path, manifest: dict) -> list[SourceVM]:
    """Register a built guest image twice: `name` boots the fast busybox init, and
    `name-systemd` boots full systemd (for work that needs real units)."""
    common = {
        "kind": SourceKind.IMAGE,
        "disk_path": str(image_dir / "base.qcow2"),
        "disk_format": "qcow2",
        "kernel": str(image_dir / "vmlinuz"),
        "initrd": str(image_dir / "initrd.img"),
        "enabled": True,
    }
    variants = [
        (
            name,
            manifest["fast_cmdline"],
            "Debian 12, busybox init (boots to SSH in ~6 s under TCG)",
        ),
        (
            f"{name}-systemd",
            manifest["systemd_cmdline"],
            "Debian 12, systemd (boots to SSH in ~13 s under TCG)",
        ),
    ]
    rows = []
    for row_name, cmdline, description in variants:
        row, _ = SourceVM.objects.update_or_create(
            name=row_name,
            defaults={
                **common,
                "cmdline": cmdline,
                "description": f"{description}; image {manifest.get('key', '')}",
            },
        )
        rows.append(row)
    return rows


def register_domain(name: str, domain_name: str, description: str = "") -> SourceVM:
    """Register a shut-off libvirt domain as a golden VM; clones are overlays on its disk."""
    if not domain_name:
        raise InvalidInput.field("domain_name", "is required.")
    row, _ = SourceVM.objects.update_or_create(
        name=name,
        defaults={
            "kind": SourceKind.DOMAIN,
            "domain_name": domain_name,
            "description": description,
        },
    )
    return row


def save_source_vm(source: SourceVM) -> SourceVM:
    """An operator's edit of a source VM (the admin)."""
    source.save()
    return source


def delete_source_vms(sources) -> None:
    """Remove source VMs (the admin); one that sandboxes were cloned from is protected."""
    sources.delete()


# --- Health --------------------------------------------------------------------------------


def health() -> dict:
    """Liveness of the database, the broker and the hosts' workers: {"status": "ok" or
    "degraded", "database", "broker": "ok" or "error", "hosts": [Host]}. The answer says
    "error", the log says why (an exception's text names hosts, ports, users and databases)."""
    db = broker = "ok"
    try:
        connection.ensure_connection()
    except Exception:  # noqa: BLE001
        log.warning("health: database unreachable", exc_info=True)
        db = "error"
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception:  # noqa: BLE001
        log.warning("health: broker unreachable", exc_info=True)
        broker = "error"
    hosts = list(Host.objects.all()) if db == "ok" else []
    healthy = db == "ok" and broker == "ok"
    return {
        "status": "ok" if healthy else "degraded",
        "database": db,
        "broker": broker,
        "hosts": hosts,
    }


# --- Queries -------------------------------------------------------------------------------


def visible_sandboxes(user):
    """Sandboxes `user` may see: its own, or all for staff. Another agent's is a 404."""
    qs = Sandbox.objects.select_related("host", "source", "owner")
    if user.is_staff:
        return qs
    return qs.filter(owner=user)


def visible_operations(user):
    qs = Operation.objects.select_related("sandbox", "host")
    if user.is_staff:
        return qs
    return qs.filter(Q(requested_by=user) | Q(sandbox__owner=user))


# --- Sandbox lifecycle ---------------------------------------------------------------------


def new_operation(
    kind: str,
    sandbox: Sandbox,
    user,
    *,
    deadline_seconds: int | None,
    snapshot: Snapshot | None = None,
    **input,
) -> Operation:
    """The operation row for `kind` on `sandbox`, audited. `deadline_seconds` None: no
    deadline yet (a queued boot gets its own when it is admitted: `admit_boots`)."""
    audit.record(f"sandbox.{kind}", user=user, target=sandbox, data=input)
    return Operation.objects.create(
        kind=kind,
        sandbox=sandbox,
        snapshot=snapshot,
        host=sandbox.host,
        queue=queues.queue_for(tasks.work_for_kind(kind), sandbox.host.name),
        requested_by=user,
        input=input,
        deadline=timezone.now() + timedelta(seconds=deadline_seconds)
        if deadline_seconds is not None
        else None,
        message="queued",
    )


def allocate_port(host: Host, *, bindable: bool = False) -> int:
    """The lowest port of the host's range (`Host.port_range`) no live sandbox on `host`
    holds. With `bindable` (on the host itself, i.e. in its worker) also one nothing else on
    the machine listens on."""
    low, high = host.port_range()
    used = set(
        Sandbox.objects.filter(host=host, ssh_port__isnull=False)
        .exclude(state=SandboxState.DESTROYED)
        .values_list("ssh_port", flat=True)
    )
    for port in range(low, high + 1):
        if port not in used and (not bindable or port_is_free(port)):
            return port
    raise Unavailable(f"Host {host.name} has no free SSH port in {low}-{high}.", code="capacity")


def port_is_free(port: int, address: str = "127.0.0.1") -> bool:
    """Whether nothing on this machine listens on address:port (checked by the worker,
    which runs on the sandbox's host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def validate_sizes(vcpus: int | None, memory_mb: int | None, ttl_seconds: int | None) -> dict:
    """The sandbox's `vcpus`, `memory_mb` and `ttl_seconds`, defaults filled in (the TTL's is
    the caller's: quotas.default_ttl_seconds), or InvalidInput."""
    vcpus = vsb("DEFAULT_VCPUS") if vcpus is None else vcpus
    memory_mb = vsb("DEFAULT_MEMORY_MB") if memory_mb is None else memory_mb
    if not 1 <= vcpus <= vsb("MAX_VCPUS"):
        raise InvalidInput.field("vcpus", f"must be between 1 and {vsb('MAX_VCPUS')}.")
    if not vsb("MIN_MEMORY_MB") <= memory_mb <= vsb("MAX_MEMORY_MB"):
        raise InvalidInput.field(
            "memory_mb", f"must be between {vsb('MIN_MEMORY_MB')} and {vsb('MAX_MEMORY_MB')} MiB."
        )
    if ttl_seconds is not None and not 0 < ttl_seconds <= vsb("MAX_TTL_SECONDS"):
        raise InvalidInput.field(
            "ttl_seconds", f"must be between 1 and {vsb('MAX_TTL_SECONDS')} seconds (or omitted)."
        )
    return {"vcpus": vcpus, "memory_mb": memory_mb, "ttl_seconds": ttl_seconds}


def create_sandbox(
    owner,
    *,
    source_vm_name: str = "",
    from_sandbox=None,
    from_snapshot: str = "",
    agent_id: str = "",
    vcpus: int | None = None,
    memory_mb: int | None = None,
    ttl_seconds: int | None = None,
    auto_start: bool = True,
    egress_allow=(),
    api_key=None,
) -> Operation:
    """Register a sandbox and enqueue its creation on the chosen host. Returns the create
    Operation; its sandbox is `queued` until one of the host's boot slots is free
    (`admit_boots`; at once when one is), then `requested` until the worker picks it up
    (a sandbox not auto-started needs no slot: `requested` at once). With
    `from_sandbox` + `from_snapshot` the sandbox is a fork: its disk starts from that
    snapshot, on the origin's host, and it boots with its own host key and machine-id.
    `api_key`: the key the request came with, whose quotas and default TTL apply
    (sandboxes/quotas.py)."""
    forked_from = None
    if from_sandbox or from_snapshot:
        if not (from_sandbox and from_snapshot):
            missing = "from_snapshot" if from_sandbox else "from_sandbox"
            raise InvalidInput.field(missing, "a fork needs both from_sandbox and from_snapshot.")
        forked_from = fork_origin(owner, from_sandbox, from_snapshot)
        source = forked_from.sandbox.source
    elif not source_vm_name:
        raise InvalidInput.field("source_vm_name", "is required (or from_sandbox + from_snapshot).")
    else:
        source = SourceVM.objects.filter(name=source_vm_name, enabled=True).first()
    if source is None:
        known = ", ".join(SourceVM.objects.filter(enabled=True).values_list("name", flat=True))
        raise InvalidInput.field(
            "source_vm_name",
            f"unknown source VM {source_vm_name!r}; known: {known or 'none (run manage.py build_guest_image)'}.",
        )
    if ttl_seconds is None:
        ttl_seconds = quotas.default_ttl_seconds(api_key)
    sizes = validate_sizes(vcpus, memory_mb, ttl_seconds)
    egress_rules = egress.create_rules(owner, egress_allow)
    mode = vsb("NETWORK_MODE")
    for _ in range(5):
        sandbox_id = uuid.uuid4()
        try:
            with transaction.atomic():
                quotas.check_sandbox(owner, api_key, sizes["memory_mb"])
                # Chosen with the candidates locked: creates at once count each other.
                host = choose_host(
                    source,
                    only=forked_from.sandbox.host if forked_from else None,
                    memory_mb=sizes["memory_mb"],
                    lock=True,
                )
                sandbox = Sandbox.objects.create(
                    id=sandbox_id,
                    name=f"sbx-{sandbox_id.hex[:8]}",
                    agent_id=agent_id or owner.get_username(),
                    owner=owner,
                    host=host,
                    source=source,
                    **sizes,
                    expires_at=timezone.now() + timedelta(seconds=ttl_seconds)
                    if ttl_seconds
                    else None,
                    network_mode=mode,
                    ssh_host="127.0.0.1" if mode == NetworkMode.PORT_FORWARD else "",
                    ssh_port=allocate_port(host) if mode == NetworkMode.PORT_FORWARD else None,
                    workdir=host.workdir_for(f"sbx-{sandbox_id.hex[:8]}"),
                    forked_from=forked_from,
                    **(
                        {"state": SandboxState.QUEUED, "queued_at": timezone.now()}
                        if auto_start
                        else {}
                    ),
                )
                egress.save_create_rules(sandbox, egress_rules, owner)
                op = new_operation(
                    OperationKind.CREATE,
                    sandbox,
                    owner,
                    deadline_seconds=None if auto_start else _boot_deadline(OperationKind.CREATE),
                    auto_start=auto_start,
                )
                if auto_start:
                    admit_boots(host)
                else:
                    enqueue(tasks.provision_sandbox, host, str(op.id))
            log.info("sandbox requested", extra={"sandbox_id": str(sandbox.id), "host": host.name})
            return _reloaded(op)
        except IntegrityError:
            # Another request took the same port (or name) at the same moment: pick again.
            continue
    raise Unavailable("Could not allocate a port for the sandbox; try again.", code="busy")


# Each lifecycle verb: the state it moves the sandbox to at once, and its deadline (a
# setting's timeout plus a margin, in seconds). Its task is the kind's own
# (tasks.TASK_FOR_KIND, which a restarted worker resumes with too).
LIFECYCLE_VERBS = {
    OperationKind.START: (SandboxState.BOOTING, "READY_TIMEOUT_SECONDS", 60),
    OperationKind.STOP: (SandboxState.STOPPING, "SHUTDOWN_TIMEOUT_SECONDS", 120),
    OperationKind.DESTROY: (SandboxState.DESTROYING, "SHUTDOWN_TIMEOUT_SECONDS", 300),
    OperationKind.RESTORE: (SandboxState.RESTORING, "READY_TIMEOUT_SECONDS", 120),
}


def _lifecycle_op(
    sandbox: Sandbox,
    user,
    kind: str,
    snapshot: Snapshot | None = None,
    expected: list[str] | None = None,
    room: bool = True,
    **input,
) -> Operation:
    """Move the sandbox to the verb's state and queue its operation. A start, or a restore
    to a running snapshot, of a sandbox that holds no memory (stopped, in error) first needs
    room on its host (`room=False`: its domain already runs)."""
    target, timeout_setting, margin = LIFECYCLE_VERBS[kind]
    task, deadline = tasks.TASK_FOR_KIND[kind], vsb(timeout_setting) + margin
    runs_again = kind == OperationKind.START or (
        kind == OperationKind.RESTORE and snapshot is not None and snapshot.has_memory
    )
    with transaction.atomic():
        if room and runs_again and not capacity.holds_memory(sandbox.state):
            check_room(sandbox)
        if not lifecycle.transition(sandbox.pk, target, expected=expected):
            sandbox.refresh_from_db(fields=["state"])
            raise Conflict(
                f"Sandbox {sandbox.name} is {sandbox.state}; cannot {kind} it now.",
                code="invalid_state",
            )
        sandbox.refresh_from_db()
        op = new_operation(
            kind, sandbox, user, deadline_seconds=deadline, snapshot=snapshot, **input
        )
        enqueue(task, sandbox.host, str(op.id))
    return op


def start_sandbox(sandbox: Sandbox, user) -> Operation:
    """Boot a stopped (or failed) sandbox: it queues for one of its host's boot slots like
    a create (`admit_boots`), at once in `booting` when one is free."""
    if sandbox.state == SandboxState.READY:
        raise Conflict(f"Sandbox {sandbox.name} is already running.", code="invalid_state")
    require_live_host(sandbox.host, sandbox)
    with transaction.atomic():
        if not capacity.holds_memory(sandbox.state):
            check_room(sandbox)  # it will hold memory again: room on its host first
        if not lifecycle.transition(sandbox.pk, SandboxState.QUEUED, queued_at=timezone.now()):
            sandbox.refresh_from_db(fields=["state"])
            raise Conflict(
                f"Sandbox {sandbox.name} is {sandbox.state}; cannot start it now.",
                code="invalid_state",
            )
        sandbox.refresh_from_db()
        op = new_operation(OperationKind.START, sandbox, user, deadline_seconds=None)
        admit_boots(sandbox.host)
    return _reloaded(op)


def stop_sandbox(sandbox: Sandbox, user) -> Operation:
    require_live_host(sandbox.host, sandbox)
    return _lifecycle_op(sandbox, user, OperationKind.STOP)


def destroy_sandbox(sandbox: Sandbox, user) -> Operation:
    """Accepted also while the host has no live worker (the agent gives the sandbox up; the
    worker destroys it when it is back, or the deadline errors the operation)."""
    if sandbox.state == SandboxState.DESTROYING:
        existing = sandbox.operations.filter(kind=OperationKind.DESTROY).first()
        if existing:
            return existing
    if sandbox.state == SandboxState.DESTROYED:
        raise Conflict(f"Sandbox {sandbox.name} is already destroyed.", code="invalid_state")
    if sandbox.state == SandboxState.QUEUED:
        with transaction.atomic():
            # The host first, as admit_boots takes it: a queued sandbox is admitted or
            # leaves the queue, never both.
            _lock_host(sandbox.host_id)
            with contextlib.suppress(Conflict):
                op = _lifecycle_op(
                    sandbox, user, OperationKind.DESTROY, expected=[SandboxState.QUEUED]
                )
                _leave_queue(sandbox)
                return op
    return _lifecycle_op(sandbox, user, OperationKind.DESTROY)


QUEUE_WAIT_LIMIT = 3600  # seconds a waiting request spends at most on a boot queue


def wait_for_operation(op: Operation, timeout: float) -> Operation:
    """Block until the operation is done or `timeout` passes (then OperationTimeout). The
    worker pushes a wake-up when it closes an operation (finish_operation); the database
    row stays the truth, re-read after every wake-up or second. A create or start queued
    for a boot slot: `timeout` counts from its admission (at most QUEUE_WAIT_LIMIT more)."""
    op_id = op.pk
    give_up = time.monotonic() + timeout
    limit = give_up + QUEUE_WAIT_LIMIT
    while True:
        op = wakeups.wait_until(
            lambda: Operation.objects.get(pk=op_id),
            lambda current: current.is_done,
            key=op_id,
            kind="operation",
            timeout=max(0.0, give_up - time.monotonic()),
        )
        if op.is_done or op.kind not in ADMITTED_TO:
            break
        # Still waiting: time since its admission (none yet while queued) is what counts.
        since = (timezone.now() - op.started_at).total_seconds() if op.started_at else 0.0
        give_up = min(limit, time.monotonic() + timeout - since)
        if give_up <= time.monotonic():
            break
    if not op.is_done:
        raise OperationTimeout(
            f"Operation {op.kind} is still {op.status} ({op.message}) after {timeout:.0f} s; "
            f"poll GET /v1/operations/{op.id}.",
            code="timeout",
        )
    return op


# --- Admission -----------------------------------------------------------------------------
# A host boots at most `boot_slots(host)` guests at once (TCG guests booting together starve
# each other past their readiness timeout); the other creates and starts wait in `queued`,
# first come first served, and are admitted as boots end. Every decision is taken under a
# lock on the Host row, so no two workers, requests or sweeps ever over-admit.

# The states holding a boot slot: from admission (`requested` is an admitted create its
# worker has not taken yet) until the guest is ready, failed, stopped or destroyed.
BOOT_STATES = (
    SandboxState.REQUESTED,
    SandboxState.PROVISIONING,
    SandboxState.BOOTING,
    SandboxState.WAITING_FOR_IP,
)
# The operations that wait in the queue, and the state each is admitted to.
ADMITTED_TO = {
    OperationKind.CREATE: SandboxState.REQUESTED,
    OperationKind.START: SandboxState.BOOTING,
}


def boot_slots_for(domain_type: str, cores: int) -> int:
    """How many guests a host boots at once: VSB_BOOT_CONCURRENCY when set, else one per
    core under TCG (a booting TCG guest keeps a core busy) and two per core under KVM."""
    override = vsb("BOOT_CONCURRENCY")
    if override > 0:
        return override
    return max(1, cores) * (2 if domain_type == "kvm" else 1)


def host_cores() -> int:
    """The cores this process may run on (the worker's, on its host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def boot_slots(host: Host) -> int:
    """The host's boot slots as its worker reported them; before it has, as this process
    would derive them."""
    return host.boot_slots or boot_slots_for(host.domain_type, host_cores())


def _boot_deadline(kind: str) -> int:
    """Seconds from a boot's admission to its operation's deadline."""
    if kind == OperationKind.CREATE:
        return vsb("READY_TIMEOUT_SECONDS") + 120
    _, timeout_setting, margin = LIFECYCLE_VERBS[kind]
    return vsb(timeout_setting) + margin


def _lock_host(host_id) -> Host:
    # NO KEY: inserting a sandbox or operation holds a KEY SHARE lock on its host, which a
    # plain FOR UPDATE would wait for (two creates would deadlock).
    return Host.objects.select_for_update(no_key=True).get(pk=host_id)


def _reloaded(op: Operation) -> Operation:
    return Operation.objects.select_related("sandbox", "host").get(pk=op.pk)


def admit_boots(host: Host | int) -> list[Operation]:
    """Admit the host's queued boots, oldest first, into its free boot slots: each moves to
    the state its operation starts from, its operation's clock (the readiness timeout and
    the deadline) starts now, and its task is sent on commit. The rest get their positions
    (1 = next). Returns the operations admitted."""
    with transaction.atomic():
        host = _lock_host(getattr(host, "pk", host))
        free = boot_slots(host) - Sandbox.objects.filter(host=host, state__in=BOOT_STATES).count()
        queued = list(
            Sandbox.objects.filter(host=host, state=SandboxState.QUEUED).order_by(
                "queued_at", "created_at"
            )
        )
        waiting_ops = {
            op.sandbox_id: op
            for op in Operation.objects.filter(
                sandbox__in=queued, kind__in=list(ADMITTED_TO), status__in=OPEN_STATUSES
            ).order_by("-created_at")
        }
        admitted, waiting = [], []
        for sandbox in queued:
            op = waiting_ops.get(sandbox.pk)
            if op is None:
                # Its operation was closed (failed by a sweep): nothing would ever boot it.
                lifecycle.transition(
                    sandbox.pk,
                    SandboxState.ERROR,
                    expected=[SandboxState.QUEUED],
                    error="its boot was cancelled while it was queued",
                    queue_position=None,
                )
            elif free <= 0:
                waiting.append((sandbox, op))
            elif _admit(host, sandbox, op):
                admitted.append(op)
                free -= 1
        _number_queue(host, waiting)
    if admitted:
        log.info("host %s: admitted %d boot(s), %d queued", host.name, len(admitted), len(waiting))
    return admitted


def _admit(host: Host, sandbox: Sandbox, op: Operation) -> bool:
    if not lifecycle.transition(
        sandbox.pk,
        ADMITTED_TO[op.kind],
        expected=[SandboxState.QUEUED],
        queued_at=None,
        queue_position=None,
    ):
        return False  # it left the queue meanwhile (destroyed)
    now = timezone.now()
    Operation.objects.filter(pk=op.pk).update(
        status=OperationStatus.PENDING,
        attempt=0,  # a stray message's claim while it was queued is no attempt
        started_at=now,
        heartbeat_at=now,
        deadline=now + timedelta(seconds=_boot_deadline(op.kind)),
        message="admitted: a boot slot is free",
    )
    enqueue(tasks.TASK_FOR_KIND[op.kind], host, str(op.pk))
    return True


def _number_queue(host: Host, waiting: list[tuple[Sandbox, Operation]]) -> None:
    """Write each waiting sandbox's position and its operation's message (only changes)."""
    for position, (sandbox, op) in enumerate(waiting, 1):
        message = f"queued: position {position} of {len(waiting)} on host {host.name}"
        if sandbox.queue_position != position:
            Sandbox.objects.filter(pk=sandbox.pk, state=SandboxState.QUEUED).update(
                queue_position=position
            )
        if op.message != message:
            Operation.objects.filter(pk=op.pk).update(message=message)


def _leave_queue(sandbox: Sandbox) -> None:
    """A queued sandbox is being destroyed: its waiting create or start ends (the ones
    behind it move up: finish_operation admits and renumbers)."""
    Sandbox.objects.filter(pk=sandbox.pk).update(queued_at=None, queue_position=None)
    for op_id in Operation.objects.filter(
        sandbox=sandbox, kind__in=list(ADMITTED_TO), status__in=OPEN_STATUSES
    ).values_list("pk", flat=True):
        finish_operation(
            op_id,
            OperationStatus.FAILED,
            error="The sandbox was destroyed while it waited for a boot slot.",
            message="destroyed while queued",
        )


def _admit_quietly(host_id) -> list[Operation]:
    """admit_boots where a failure must not fail the caller (the periodic sweep admits)."""
    try:
        return admit_boots(host_id)
    except Exception:  # noqa: BLE001
        log.warning("could not admit queued boots on host %s", host_id, exc_info=True)
        return []


# --- Snapshots -----------------------------------------------------------------------------

SNAPSHOT_DEADLINE = 600


def _validate_snapshot_name(name: str) -> None:
    try:
        snapshot_name_validator(name)
    except Exception:  # noqa: BLE001 - Django's ValidationError; the message says what is allowed
        raise InvalidInput.field(
            "name", "1-64 letters, digits and . _ -, starting with a letter or digit."
        ) from None


def _snapshot_op(kind: str, task, sandbox: Sandbox, snap: Snapshot, user) -> Operation:
    """The operation carrying `snap`, queued on the sandbox's host when the caller's
    transaction commits."""
    op = new_operation(
        kind, sandbox, user, deadline_seconds=SNAPSHOT_DEADLINE, snapshot=snap, name=snap.name
    )
    enqueue(task, sandbox.host, str(op.pk))
    return op


def get_snapshot(sandbox: Sandbox, name: str) -> Snapshot:
    snap = Snapshot.objects.filter(sandbox=sandbox, name=name).first()
    if snap is None:
        known = ", ".join(sandbox.snapshots.values_list("name", flat=True)) or "none"
        raise NotFound(f"Sandbox {sandbox.name} has no snapshot {name!r} (known: {known}).")
    return snap


def create_snapshot(
    sandbox: Sandbox,
    user,
    *,
    name: str,
    description: str = "",
    disk_only: bool = False,
    api_key=None,
) -> Operation:
    """Queue a snapshot. The sandbox keeps running (QEMU pauses it for a fraction of a second).
    `api_key`: the request's, whose snapshot quota applies."""
    _validate_snapshot_name(name)
    require_live_host(sandbox.host, sandbox)
    if sandbox.state not in (*WAKEABLE_STATES, SandboxState.STOPPED):
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; snapshots need it ready or stopped.",
            code="invalid_state",
        )
    if disk_only and sandbox.state in WAKEABLE_STATES:
        raise InvalidInput.field(
            "disk_only",
            "a disk-only snapshot needs a stopped sandbox (internal snapshots of a running "
            "guest include its memory); stop it first, or omit disk_only.",
        )
    try:
        with transaction.atomic():
            quotas.check_snapshot(user, api_key, sandbox)
            snap = Snapshot.objects.create(sandbox=sandbox, name=name, description=description)
            op = _snapshot_op(OperationKind.SNAPSHOT, tasks.snapshot_sandbox, sandbox, snap, user)
    except IntegrityError:
        raise Conflict(
            f"Sandbox {sandbox.name} already has a snapshot named {name!r}.", code="duplicate"
        ) from None
    return op


def restore_snapshot(sandbox: Sandbox, user, name: str) -> Operation:
    """Return the sandbox to the snapshot: running with its memory, or stopped."""
    snap = get_snapshot(sandbox, name)
    if snap.status != SnapshotStatus.READY:
        raise Conflict(f"Snapshot {name!r} is {snap.status}, not ready.", code="invalid_state")
    require_live_host(sandbox.host, sandbox)
    return _lifecycle_op(sandbox, user, OperationKind.RESTORE, snapshot=snap, name=name)


def delete_snapshot(sandbox: Sandbox, user, name: str) -> Operation:
    snap = get_snapshot(sandbox, name)
    if sandbox.state in (SandboxState.DESTROYING, SandboxState.DESTROYED):
        raise Conflict(f"Sandbox {sandbox.name} is {sandbox.state}.", code="invalid_state")
    require_live_host(sandbox.host, sandbox)
    with transaction.atomic():
        updated = Snapshot.objects.filter(
            pk=snap.pk, status__in=[SnapshotStatus.READY, SnapshotStatus.FAILED]
        ).update(status=SnapshotStatus.DELETING)
        if not updated:
            raise Conflict(f"Snapshot {name!r} is {snap.status}.", code="invalid_state")
        return _snapshot_op(
            OperationKind.DELETE_SNAPSHOT, tasks.delete_snapshot, sandbox, snap, user
        )


def fork_origin(owner, from_sandbox, from_snapshot: str) -> Snapshot:
    """The ready snapshot a fork starts from; the origin must be the caller's own."""
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


def snapshot_taken(snap: Snapshot, *, has_memory: bool, domain_state: str) -> None:
    """The worker took the snapshot."""
    Snapshot.objects.filter(pk=snap.pk).update(
        status=SnapshotStatus.READY,
        has_memory=has_memory,
        domain_state=domain_state,
        taken_at=timezone.now(),
    )


def snapshot_failed(snap: Snapshot, reason: str) -> None:
    """The worker could not take (or delete) the snapshot."""
    Snapshot.objects.filter(pk=snap.pk).update(status=SnapshotStatus.FAILED, error=reason)


def snapshot_deleted(snap: Snapshot) -> None:
    """The worker deleted the snapshot from the disk: its row goes too."""
    snap.delete()


# --- Commands ------------------------------------------------------------------------------


def validate_command_input(
    command: str, timeout_seconds: int | None, env: dict | None, cwd: str
) -> int:
    if not command or not command.strip():
        raise InvalidInput.field("command", "must not be empty.")
    if "\x00" in command:
        raise InvalidInput.field("command", "must not contain NUL bytes.")
    # The script travels as one exec argument, which Linux caps; leave room for env and cwd.
    limit = MAX_COMMAND_BYTES - 16 * 1024
    if len(command.encode()) > limit:
        raise InvalidInput.field(
            "command",
            f"is {len(command.encode())} bytes; at most {limit}. Upload long scripts as files.",
        )
    timeout = vsb("COMMAND_TIMEOUT_SECONDS") if timeout_seconds is None else timeout_seconds
    if not 1 <= timeout <= vsb("MAX_COMMAND_TIMEOUT_SECONDS"):
        raise InvalidInput.field(
            "timeout_seconds", f"must be between 1 and {vsb('MAX_COMMAND_TIMEOUT_SECONDS')}."
        )
    for name, value in (env or {}).items():
        if not ENV_NAME_RE.match(name):
            raise InvalidInput.field("env", f"{name!r} is not a valid variable name.")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidInput.field("env", f"value of {name} must be a string without NUL bytes.")
    if cwd and not cwd.startswith("/"):
        raise InvalidInput.field("cwd", "must be an absolute path.")
    return timeout


def run_command(
    sandbox: Sandbox,
    user,
    *,
    command: str,
    timeout_seconds: int | None = None,
    env: dict[str, str] | None = None,
    cwd: str = "",
    api_key=None,
) -> Command:
    """Run `command` in the sandbox on its host's worker and wait for the result. The
    Command row is written before the run and completed by the worker, so the history keeps
    it even if the caller goes away. `api_key`: the request's, whose concurrent-commands
    quota applies."""
    timeout = validate_command_input(command, timeout_seconds, env, cwd)
    # Paused or hibernated: the worker wakes it before it runs the command.
    if sandbox.state not in WAKEABLE_STATES:
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; commands need it ready.",
            code="invalid_state",
        )
    require_live_host(sandbox.host, sandbox)
    with transaction.atomic():
        quotas.check_command(user, api_key)
        cmd = Command.objects.create(
            sandbox=sandbox,
            requested_by=user,
            command=command,
            env=env or {},
            cwd=cwd,
            timeout_seconds=timeout,
        )
        enqueue(tasks.run_command, sandbox.host, str(cmd.id))
    return wait_for_command(cmd, cmd.timeout_seconds + 60)


def wait_for_command(cmd: Command, timeout: float) -> Command:
    """The command once finished, or OperationTimeout after `timeout` seconds. The worker's
    wake-up carries the very values it wrote to the row (no query on the usual path); the
    row is re-read every COMMAND_RECHECK_SECONDS in case a wake-up was lost (Redis
    restarted, or the command was failed by `resend_lost_work`)."""
    deadline = time.monotonic() + timeout
    wakeups.release_connection()
    while cmd.status == CommandStatus.RUNNING and (left := deadline - time.monotonic()) > 0:
        fields = wakeups.wait(cmd.id, min(COMMAND_RECHECK_SECONDS, left))
        if fields:
            for name, value in fields.items():
                setattr(cmd, name, value)
        else:
            wakeups.read_through_restarts(cmd.refresh_from_db, deadline, COMMAND_RECHECK_SECONDS)
            if not connection.in_atomic_block:
                # A long command: its waiting request holds no database connection between
                # re-reads (many agents' commands wait at once; PostgreSQL allows 100).
                connection.close()
    if cmd.status == CommandStatus.RUNNING:
        raise OperationTimeout(
            f"The worker of host {cmd.sandbox.host.name} did not answer; command {cmd.id} may still run.",
            code="worker_timeout",
        )
    return cmd


COMMAND_RECHECK_SECONDS = 5.0


def claim_command(cmd_id) -> Command | None:
    """Take the command for this worker: a compare-and-set, so it runs at most once
    however many messages for it arrive; None when it was taken or finished already."""
    now = timezone.now()
    taken = Command.objects.filter(
        pk=cmd_id, status=CommandStatus.RUNNING, claimed_at__isnull=True
    ).update(claimed_at=now, heartbeat_at=now)
    if not taken:
        return None
    return Command.objects.select_related("sandbox").get(pk=cmd_id)


def beat_command(cmd_id) -> None:
    """The worker running the command is alive."""
    Command.objects.filter(pk=cmd_id, status=CommandStatus.RUNNING).update(
        heartbeat_at=timezone.now()
    )


def finish_command(cmd_id, *, status: str, result=None, error: str = "") -> dict:
    """Record a command's outcome; returns the fields written (JSON-safe) for the caller."""
    fields = {"status": status, "finished_at": timezone.now(), "error": error}
    if result is not None:
        fields.update(
            exit_code=result.exit_code,
            stdout=result.stdout.decode("utf-8", "replace"),
            stderr=result.stderr.decode("utf-8", "replace"),
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
            timed_out=result.timed_out,
            duration_ms=result.duration_ms,
        )
    with transaction.atomic():
        if Command.objects.filter(pk=cmd_id, status=CommandStatus.RUNNING).update(**fields):
            _audit_command(cmd_id, fields)
    fields["finished_at"] = fields["finished_at"].isoformat()
    return fields


def _audit_command(cmd_id, fields: dict) -> None:
    cmd = Command.objects.select_related("sandbox", "requested_by").get(pk=cmd_id)
    audit.record(
        "command.finished",
        user=cmd.requested_by,
        target=cmd,
        sandbox_id=cmd.sandbox_id,
        agent=cmd.sandbox.agent_id,
        data={
            "command": cmd.command[:2000],
            "status": fields["status"],
            "exit_code": fields.get("exit_code"),
            "timed_out": fields.get("timed_out", False),
            "stdout_sha256": sha256_text(fields.get("stdout", "")),
            "stderr_sha256": sha256_text(fields.get("stderr", "")),
            "error": fields.get("error", "")[:500],
        },
    )


# --- Operations (called by tasks) ----------------------------------------------------------


# A claimed operation is held by its worker for HOLD_SECONDS, renewed every BEAT_SECONDS
# while its task runs (tasks.holding): a second message for it (a resend, a redelivery) is
# not claimed meanwhile.
HOLD_SECONDS = 15
BEAT_SECONDS = 5


def claim_operation(op_id) -> Operation | None:
    """Mark the operation running for this attempt and hold it; None when it is already
    finished or another worker holds it now (a compare-and-set: one holder at a time)."""
    now = timezone.now()
    updated = (
        Operation.objects.filter(
            pk=op_id, status__in=[OperationStatus.PENDING, OperationStatus.RUNNING]
        )
        .filter(Q(held_until__isnull=True) | Q(held_until__lt=now))
        .update(
            status=OperationStatus.RUNNING,
            attempt=F("attempt") + 1,
            heartbeat_at=now,
            held_until=now + timedelta(seconds=HOLD_SECONDS),
        )
    )
    if not updated:
        return None
    Operation.objects.filter(pk=op_id, started_at__isnull=True).update(started_at=now)
    return Operation.objects.select_related(
        "sandbox", "sandbox__source", "sandbox__forked_from__sandbox", "snapshot", "host"
    ).get(pk=op_id)


def beat_operation(op_id, *, hold: bool) -> None:
    """A running task's sign of life; with `hold`, it also renews its claim."""
    now = timezone.now()
    fields = {"heartbeat_at": now}
    if hold:
        fields["held_until"] = now + timedelta(seconds=HOLD_SECONDS)
    Operation.objects.filter(pk=op_id, status=OperationStatus.RUNNING).update(**fields)


def release_operation(op_id) -> None:
    """The claiming task has returned (done, or its next step is queued): another message
    for the operation may claim it."""
    Operation.objects.filter(pk=op_id).update(held_until=None)


def report_progress(op_id, progress: int, message: str, *, quiet_for: float = 0) -> None:
    """Progress, and a heartbeat; `quiet_for`: the next step is queued to run that many
    seconds from now (a retry's backoff), so the operation is not taken as lost before."""
    Operation.objects.filter(pk=op_id, status=OperationStatus.RUNNING).update(
        progress=progress,
        message=message[:300],
        heartbeat_at=timezone.now() + timedelta(seconds=quiet_for),
    )


def record_operation_result(op_id, result: dict) -> None:
    """What a step of a long operation has done so far (the next step, or a resumed one,
    reads it back); also a heartbeat."""
    Operation.objects.filter(pk=op_id).update(result=result, heartbeat_at=timezone.now())


def finish_operation(
    op_id, status: str, *, error: str = "", message: str = "", result: dict | None = None
) -> bool:
    """Close a running (or pending) operation; False if someone else closed it first."""
    fields = {
        "status": status,
        "error": error,
        "finished_at": timezone.now(),
        "message": (message or status)[:300],
    }
    if status == OperationStatus.SUCCEEDED:
        fields["progress"] = 100
    if result is not None:
        fields["result"] = result
    with transaction.atomic():
        closed = bool(
            Operation.objects.filter(
                pk=op_id, status__in=[OperationStatus.PENDING, OperationStatus.RUNNING]
            ).update(**fields)
        )
        if closed:
            op = Operation.objects.get(pk=op_id)
            audit.record(
                f"operation.{op.kind}",
                user=op.requested_by,
                target=op,
                sandbox_id=op.sandbox_id,
                data={"status": status, "error": error[:500], "message": fields["message"]},
            )
    if closed:
        _wake_quietly(op_id, {"status": status}, kind="operation")
        if op.kind in LIFECYCLE_KINDS and op.host_id:
            # A boot (or a stop or destroy) ended: its slot may be free for the next queued.
            _admit_quietly(op.host_id)
    return closed


def set_sandbox_fields(sandbox_id, **fields) -> None:
    Sandbox.objects.filter(pk=sandbox_id).update(updated_at=timezone.now(), **fields)


def orphaned_work(host: Host, *, kinds: list[str], commands: bool) -> tuple[list[Operation], int]:
    """Called when a worker pool of the host starts: every open operation of `kinds` (the
    ones that pool runs) died with its previous process. With `commands` (the commands pool)
    the commands that were running are marked failed, since running them again could repeat
    side effects, and their waiting requests are told at once (a command still queued then
    is not run: its task finds it finished)."""
    running = []
    if commands:
        running = list(
            Command.objects.filter(sandbox__host=host, status=CommandStatus.RUNNING).values_list(
                "pk", flat=True
            )
        )
    for cmd_id in running:
        fields = finish_command(
            cmd_id,
            status=CommandStatus.FAILED,
            error="The worker restarted while this command ran; it may or may not have completed.",
        )
        transaction.on_commit(lambda cmd_id=cmd_id, fields=fields: wakeups.publish(cmd_id, fields))
    open_ops = Operation.objects.filter(
        host=host,
        kind__in=kinds,
        status__in=[OperationStatus.PENDING, OperationStatus.RUNNING],
    ).exclude(sandbox__state=SandboxState.QUEUED)  # not sent yet: admit_boots sends them
    # Their holds died with the previous process: the resumed tasks may claim them at once.
    open_ops.update(held_until=None)
    return list(open_ops.order_by("created_at")), len(running)


def _give_up(op: Operation, reason: str) -> bool:
    """Close an open operation as errored with `reason` and, for a lifecycle operation, put
    its sandbox in error if it is mid-transition. False if it was closed meanwhile."""
    if not finish_operation(op.pk, OperationStatus.ERRORED, error=reason):
        return False
    if op.sandbox_id and op.kind in LIFECYCLE_KINDS:
        lifecycle.transition(
            op.sandbox_id,
            SandboxState.ERROR,
            expected=[
                s
                for s in lifecycle.sources_for(SandboxState.ERROR)
                if s not in (SandboxState.READY, SandboxState.STOPPED, *IDLE_STATES)
            ],
            error=reason,
        )
    return True


def fail_stuck_operations() -> int:
    """Fail operations past their deadline, and, for lifecycle operations, their sandboxes
    if those are mid-transition."""
    now = timezone.now()
    stuck = Operation.objects.filter(
        status__in=[OperationStatus.PENDING, OperationStatus.RUNNING], deadline__lt=now
    ).select_related("sandbox", "host")
    count = 0
    for op in stuck:
        reason = (
            f"{op.kind} did not finish before its deadline ({op.message}); "
            f"is the worker for host {op.host.name} running?"
        )
        count += _give_up(op, reason)
    return count


def _lost_since(resends: int) -> timedelta:
    """How long work must show no sign of life to be taken as lost: OPERATION_STALE_SECONDS,
    doubled with each resend (a long queue behind a busy worker is not flooded)."""
    return timedelta(seconds=vsb("OPERATION_STALE_SECONDS") * 2 ** min(resends, 5))


def resend_lost_work() -> dict[str, int]:
    """The periodic sweep for work whose task message was lost (a broker restart lost it, or
    it could not be sent; a database restart failed the task mid-step): an open operation
    nobody holds and with no sign of life for OPERATION_STALE_SECONDS has its task sent
    again (tasks are idempotent, claims a compare-and-set), at most OPERATION_MAX_RESENDS
    times, then it fails saying so; a command no worker took is sent again the same way;
    a command whose worker stopped beating is failed (it may have run: never twice). Only
    for hosts whose worker is alive: a dead worker's work is resumed when it starts
    (worker.recover). Returns the counts."""
    now = timezone.now()
    counts = {"resent": 0, "failed": 0, "commands_resent": 0, "commands_failed": 0}
    stale = now - timedelta(seconds=vsb("OPERATION_STALE_SECONDS"))
    alive = [h for h in Host.objects.filter(enabled=True) if h.is_alive()]
    ops = (
        Operation.objects.filter(
            host__in=alive,
            status__in=[OperationStatus.PENDING, OperationStatus.RUNNING],
            kind__in=list(tasks.TASK_FOR_KIND),
        )
        # A queued boot's task is sent at its admission, not before: nothing to lose yet.
        .exclude(sandbox__state=SandboxState.QUEUED)
        .filter(Q(held_until__isnull=True) | Q(held_until__lt=now))
        .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, created_at__lt=stale))
        .select_related("host", "sandbox")
    )
    for op in ops:
        if (op.heartbeat_at or op.created_at) > now - _lost_since(op.resends):
            continue
        if op.resends >= vsb("OPERATION_MAX_RESENDS"):
            reason = (
                f"{op.kind} was lost {op.resends + 1} times (its task vanished: a broker, "
                f"database or worker restart?) at: {op.message}"
            )
            counts["failed"] += _give_up(op, reason)
            continue
        # A compare-and-set on the sign of life: two sweeps at once resend once.
        if Operation.objects.filter(
            pk=op.pk, heartbeat_at=op.heartbeat_at, resends=op.resends
        ).update(heartbeat_at=now, resends=F("resends") + 1):
            log.warning(
                "operation %s (%s) lost at %r: sending its task again", op.pk, op.kind, op.message
            )
            enqueue(tasks.TASK_FOR_KIND[op.kind], op.host, str(op.pk))
            counts["resent"] += 1
    commands = Command.objects.filter(
        sandbox__host__in=alive, status=CommandStatus.RUNNING, heartbeat_at__lt=stale
    ).select_related("sandbox__host")
    for cmd in commands:
        if cmd.claimed_at is not None:
            # Its worker beats every few seconds while it runs: three missed periods mean
            # the worker is gone (a database restart alone delays a beat by less).
            if cmd.heartbeat_at > now - 3 * timedelta(seconds=vsb("OPERATION_STALE_SECONDS")):
                continue
            error = (
                "The worker running this command stopped (it restarted or crashed); "
                "the command may or may not have completed."
            )
        elif cmd.heartbeat_at > now - _lost_since(cmd.resends):
            continue
        elif cmd.resends < vsb("OPERATION_MAX_RESENDS"):
            if Command.objects.filter(
                pk=cmd.pk, claimed_at__isnull=True, resends=cmd.resends
            ).update(heartbeat_at=now, resends=F("resends") + 1):
                enqueue(tasks.run_command, cmd.sandbox.host, str(cmd.pk))
                counts["commands_resent"] += 1
            continue
        else:
            error = f"No worker took this command (sent {cmd.resends + 1} times); it did not run."
        fields = finish_command(cmd.pk, status=CommandStatus.FAILED, error=error)
        transaction.on_commit(lambda cmd_id=cmd.pk, fields=fields: _wake_quietly(cmd_id, fields))
        counts["commands_failed"] += 1
    # The safety net of admission: boots that ended without admitting the next (a lost
    # message, a worker restart, an operation failed by the sweeps).
    counts["admitted"] = sum(len(_admit_quietly(host.pk)) for host in alive)
    return counts


def _wake_quietly(key, fields: dict, kind: str = "command") -> None:
    try:
        wakeups.publish(key, fields, kind=kind)
    except Exception:  # noqa: BLE001 - a waiter falls back to re-reading the row
        log.warning("could not publish the end of %s %s", kind, key)


def expired_sandboxes():
    return (
        Sandbox.objects.filter(expires_at__lt=timezone.now())
        .exclude(state__in=[SandboxState.DESTROYING, SandboxState.DESTROYED])
        .select_related("host")
    )


# --- Reconcile (called by sandboxes/reconcile.py on the host's own worker) -----------------

DOMAIN_VANISHED = "domain vanished"
OPEN_STATUSES = (OperationStatus.PENDING, OperationStatus.RUNNING)


def live_hosts() -> list[Host]:
    """Hosts whose worker beat recently: the ones a reconcile can run on."""
    return [h for h in Host.objects.all() if h.is_alive()]


def _open_operations(sandbox_ref):
    return Operation.objects.filter(sandbox=sandbox_ref, status__in=OPEN_STATUSES)


def settled_sandboxes(host: Host) -> list[Sandbox]:
    """The host's ready, idle and stopped sandboxes that no operation is moving (none pending
    or running): the only rows the reconcile may correct."""
    return list(
        Sandbox.objects.filter(
            host=host, state__in=[SandboxState.READY, SandboxState.STOPPED, *IDLE_STATES]
        )
        .exclude(Exists(_open_operations(OuterRef("pk"))))
        .select_related("host")
    )


def live_sandbox_ids(ids) -> set[str]:
    """Which of these sandbox ids have a row that is not destroyed (on any host)."""
    return {
        str(pk)
        for pk in Sandbox.objects.filter(pk__in=list(ids))
        .exclude(state=SandboxState.DESTROYED)
        .values_list("pk", flat=True)
    }


def reconcile_sandbox(
    sandbox: Sandbox, target: str, reason: str, *, domain: dict, **fields
) -> bool:
    """Move a settled sandbox to `target` because its domain says otherwise (`domain`: what
    libvirt showed), audited as `sandbox.reconciled` with the reason. Only from the state the
    reconcile saw, and only while no operation is open: False when anything moved first."""
    with transaction.atomic():
        if _open_operations(sandbox.pk).exists():
            return False
        error = reason if target == SandboxState.ERROR else ""
        if not lifecycle.transition(
            sandbox.pk, target, expected=[sandbox.state], error=error, **fields
        ):
            return False
        audit.record(
            "sandbox.reconciled",
            target=sandbox,
            data={"from": sandbox.state, "to": target, "reason": reason, "domain": domain},
        )
    log.warning(
        "reconcile: sandbox %s %s -> %s: %s",
        sandbox.name,
        sandbox.state,
        target,
        reason,
        extra={"sandbox_id": str(sandbox.pk), "host": sandbox.host.name},
    )
    return True


def adopt_running_sandbox(sandbox: Sandbox, reason: str) -> Operation | None:
    """A stopped sandbox whose domain runs (started behind our back): a start operation by
    the system takes it through the usual readiness check (pinned host key, SSH) to ready.
    None when the sandbox moved or an operation opened first."""
    try:
        with transaction.atomic():
            if _open_operations(sandbox.pk).exists():
                return None
            return _lifecycle_op(
                sandbox,
                None,
                OperationKind.START,
                expected=[SandboxState.STOPPED],
                room=False,  # it runs already: its memory is in use whatever we count
                reason=reason,
            )
    except Conflict:
        return None


def record_stray_destroyed(host: Host, domain: dict, workdir: str | None, reason: str) -> None:
    """The audit event of a stray domain (our metadata, this host, no live row) destroyed."""
    try:
        sandbox_id = uuid.UUID(domain.get("tags", {}).get("sandbox", ""))
    except ValueError:
        sandbox_id = None
    audit.record(
        "domain.stray_destroyed",
        target_type="domain",
        target_id=domain["name"],
        sandbox_id=sandbox_id,
        data={"host": host.name, "domain": domain, "workdir": workdir, "reason": reason},
    )
