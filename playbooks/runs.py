"""Inventories, dry runs and approved applies: the service layer (the only writer).

Production is operators' business. Inventories, their variables and the runs against them
(status, per-host stats, events with `--check --diff` output, the run's websocket) exist only
for holders of an inventory permission (VIEW, ADD, RUN below); for anyone else, agents
included, every one of them is a 404, as if it did not exist. Their audit events carry no
sandbox id, so an agent does not read them through its sandbox's audit trail either.

An apply needs an approval request whose payload pins the playbook version (id and sha256),
the inventory (id and a fingerprint of its hosts) and the dry run it was shown. One approval
allows one apply, consumed before the run starts, also when the run then fails. Editing the
playbook makes a new version, so an approval of the old one no longer matches."""

from __future__ import annotations

import hashlib
import json
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Prefetch
from django.utils import timezone

from approvals import services as approvals
from approvals.choices import ApprovalOrigin, ApprovalStatus
from approvals.models import ApprovalRequest
from audit import services as audit
from core import queues, wakeups
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from sandboxes.models import Host, Sandbox
from sandboxes.remote.ca import parse_public_key

from . import secrets, tasks
from .choices import RunKind, RunStatus
from .models import (
    Inventory,
    InventoryHost,
    Playbook,
    PlaybookEvent,
    PlaybookRun,
    PlaybookVersion,
)

log = logging.getLogger(__name__)

VIEW_PERMISSION = "playbooks.view_inventory"  # inventories and runs: read
ADD_PERMISSION = "playbooks.add_inventory"  # register an inventory
RUN_PERMISSION = "playbooks.run_inventory"  # dry runs, applies, cancelling a run
INVENTORY_PERMISSIONS = (VIEW_PERMISSION, ADD_PERMISSION, RUN_PERMISSION)
APPLY_ACTION = "apply_playbook"  # reserved in approvals.choices.RESERVED_ACTION_TYPES


# --- who may see production ------------------------------------------------------------


def sees_inventories(user) -> bool:
    """Holders of any inventory permission see inventories and runs; nobody else does."""
    return bool(
        user and user.is_authenticated and any(user.has_perm(p) for p in INVENTORY_PERMISSIONS)
    )


def require(user, permission: str | None = None, *, what: str = "Not found.") -> None:
    """A 404 for whoever holds no inventory permission (an agent learns nothing, not even that
    the thing exists); a 403 naming `permission` for an operator who lacks that one."""
    if not sees_inventories(user):
        raise NotFound(what)
    if permission and not user.has_perm(permission):
        raise Forbidden(f"This needs the {permission} permission.")


def visible_inventories(user):
    """With their hosts by name, as the API shows them."""
    if not sees_inventories(user):
        return Inventory.objects.none()
    return Inventory.objects.prefetch_related(
        Prefetch("hosts", queryset=InventoryHost.objects.order_by("name"))
    )


# --- inventories -------------------------------------------------------------------------


def create_inventory(
    user, *, name: str, description: str = "", variables=None, hosts=()
) -> Inventory:
    require(user, ADD_PERMISSION)
    if Inventory.objects.filter(name=name).exists():
        raise Conflict(
            f"An inventory named {name!r} exists.",
            fields={"name": ["already exists"]},
            code="duplicate",
        )
    if not hosts:
        raise InvalidInput.field("hosts", "at least one host is needed.")
    rows = [_host_row(i, h) for i, h in enumerate(hosts)]
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise InvalidInput.field("hosts", "host names must be unique.")
    with transaction.atomic():
        inventory = Inventory.objects.create(
            name=name, description=description, variables=variables or {}, created_by=user
        )
        for row in rows:
            row.inventory = inventory
            row.save()
        audit.record(
            "inventory.create",
            user=user,
            target=inventory,
            data={"name": name, "hosts": [_public(r) for r in rows]},
        )
    return visible_inventories(user).get(pk=inventory.pk)


def _host_row(index: int, spec: dict) -> InventoryHost:
    field = f"hosts.{index}"
    row = InventoryHost(
        name=spec["name"],
        user=spec.get("user") or "root",
        port=spec.get("port") or 22,
        groups=spec.get("groups") or [],
        variables=spec.get("variables") or {},
    )
    if spec.get("sandbox_id"):
        sandbox = Sandbox.objects.filter(pk=spec["sandbox_id"]).first()
        if sandbox is None:
            raise InvalidInput.field(f"{field}.sandbox_id", f"no sandbox {spec['sandbox_id']}.")
        row.sandbox = sandbox
        return row
    for required in ("address", "host_key", "private_key"):
        if not spec.get(required):
            raise InvalidInput.field(f"{field}.{required}", "is required (or give sandbox_id).")
    try:
        parse_public_key(spec["host_key"])
    except ValueError as err:
        raise InvalidInput.field(f"{field}.host_key", f"not an SSH public key: {err}") from None
    if "PRIVATE KEY" not in spec["private_key"]:
        raise InvalidInput.field(f"{field}.private_key", "must be an OpenSSH or PEM private key.")
    row.address = spec["address"]
    row.host_key = spec["host_key"].strip()
    row.private_key_encrypted = secrets.encrypt(spec["private_key"])
    row.certificate = spec.get("certificate", "")
    return row


def _public(row: InventoryHost) -> dict:
    """What may be shown of a host: never the key."""
    return {
        "name": row.name,
        "address": row.address,
        "port": row.port,
        "user": row.user,
        "groups": row.groups,
        "variables": row.variables,
        "host_key": row.host_key,
        "sandbox_id": str(row.sandbox_id) if row.sandbox_id else None,
        "has_private_key": bool(row.private_key_encrypted),
    }


def fingerprint(inventory: Inventory) -> str:
    """Changes whenever a host, its address, key, credential or variables change."""
    hosts = []
    for h in inventory.hosts.order_by("name"):
        public = _public(h)
        public["credential"] = hashlib.sha256(h.private_key_encrypted.encode()).hexdigest()
        hosts.append(public)
    body = json.dumps({"variables": inventory.variables, "hosts": hosts}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def get_inventory(user, inventory_id) -> Inventory:
    try:
        return visible_inventories(user).get(pk=inventory_id)
    except (Inventory.DoesNotExist, ValueError, TypeError, ValidationError):
        raise NotFound(f"No inventory {inventory_id}.") from None


def host_for(inventory: Inventory) -> str | None:
    """The KVM host to run on: sandbox targets are reached through their host's 127.0.0.1
    port forward, so there; other targets anywhere (None: `control.commands`, which every
    host's commands pool consumes)."""
    hosts = {h.sandbox.host_id for h in inventory.hosts.select_related("sandbox") if h.sandbox_id}
    if len(hosts) > 1:
        raise InvalidInput.field("inventory", "sandbox targets must all live on one KVM host.")
    return Host.objects.get(pk=hosts.pop()).name if hosts else None


# --- runs ---------------------------------------------------------------------------------


def _version(playbook_id, number: int | None) -> PlaybookVersion:
    # Only reached by holders of the run permission: they take any agent's playbook to production.
    try:
        playbook = Playbook.objects.filter(pk=playbook_id).first()
    except ValidationError:  # the route lets dashes through: "----…" is no UUID
        playbook = None
    if playbook is None:
        raise NotFound(f"No playbook {playbook_id}.")
    latest = playbook.latest
    if number is None:
        return latest
    version = playbook.versions.filter(number=number).first()
    if version is None:
        raise NotFound(f"Playbook {playbook_id} has no version {number}.")
    return version


def _start_run(
    user, kind: str, version: PlaybookVersion, inventory: Inventory, approval=None
) -> PlaybookRun:
    """A new run, its audit event (`playbook.check` or `playbook.apply`) and its task, on the
    commands queue of the host its sandbox targets live on; inside the caller's transaction."""
    host = host_for(inventory)
    run = PlaybookRun.objects.create(
        version=version,
        inventory=inventory,
        kind=kind,
        queue=queues.queue_for(queues.work_of(tasks.run_playbook), host),
        requested_by=user,
        approval=approval,
    )
    data = {**audit_origin(version), "inventory": inventory.name}
    if approval is not None:
        data["approval"] = str(approval.id)
    audit.record(f"playbook.{kind}", user=user, target=run, data=data)
    queues.enqueue(tasks.run_playbook, str(run.pk), host=host)
    return run


def start_check(user, playbook_id, inventory_id, version: int | None = None) -> PlaybookRun:
    """A dry run (ansible --check --diff): no approval needed, nothing changes on the targets,
    but its output is production's file contents: operators with the run permission only."""
    require(user, RUN_PERMISSION, what=f"No inventory {inventory_id}.")
    version_row = _version(playbook_id, version)
    if version_row.syntax_ok is False:
        raise Conflict(
            "This version does not pass ansible-playbook --syntax-check.", code="syntax_error"
        )
    inventory = get_inventory(user, inventory_id)
    with transaction.atomic():
        return _start_run(user, RunKind.CHECK, version_row, inventory)


def audit_origin(version: PlaybookVersion) -> dict:
    """Where a run's playbook came from, for its audit events. In `data`, not as the event's
    sandbox id: that would show the run (inventory, per-host stats, errors) to the agent."""
    return {
        "playbook": str(version.playbook_id),
        "version": version.number,
        "from_sandbox": str(version.playbook.sandbox_id),
    }


def apply_payload(version: PlaybookVersion, inventory: Inventory, check: PlaybookRun) -> dict:
    return {
        "action": "apply_playbook",
        "playbook_id": str(version.playbook_id),
        "version": version.number,
        "version_id": str(version.id),
        "version_sha256": version.sha256,
        "inventory_id": str(inventory.id),
        "inventory": inventory.name,
        "inventory_fingerprint": fingerprint(inventory),
        "dry_run_id": str(check.id),
        "dry_run": {"status": check.status, "hosts": check.host_stats},
    }


def _latest_check(version: PlaybookVersion, inventory: Inventory) -> PlaybookRun | None:
    return (
        PlaybookRun.objects.filter(
            version=version,
            inventory=inventory,
            kind=RunKind.CHECK,
            status=RunStatus.SUCCESSFUL,
        )
        .order_by("-created_at")
        .first()
    )


def request_apply(user, playbook_id, inventory_id, approval_id=None) -> tuple[str, object]:
    """("approval", ApprovalRequest) when an approval is still needed (a new request is made
    pending), or ("run", PlaybookRun) when `approval_id` is approved for exactly this apply.
    The apply always uses the playbook's latest version. Only a request the server opened for
    an apply (origin=system) counts: one a caller made with the same action type and payload,
    and whatever prompt, never does."""
    require(user, RUN_PERMISSION, what=f"No inventory {inventory_id}.")
    version = _version(playbook_id, None)
    inventory = get_inventory(user, inventory_id)
    req = None
    if approval_id:
        req = ApprovalRequest.objects.filter(pk=approval_id).first()
        if req is None or req.requested_by_id != user.pk:
            raise NotFound(f"No approval request {approval_id} of yours.")
        if req.origin != ApprovalOrigin.SYSTEM or req.action_type != APPLY_ACTION:
            raise Conflict(
                f"Approval request {req.id} was not opened by the server for an apply; ask for "
                "one with this route (without approval_id).",
                code="approval_not_system",
            )
    pinned_check = (req.payload.get("dry_run_id") if req else None) or None
    check = (
        PlaybookRun.objects.filter(pk=pinned_check, version=version, inventory=inventory).first()
        if pinned_check
        else _latest_check(version, inventory)
    )
    if check is None and req is not None:
        raise Conflict(
            f"Approval {req.id} was given for version {req.payload.get('version')} and dry run "
            f"{pinned_check}; the playbook is now at version {version.number}. Ask again.",
            code="approval_mismatch",
        )
    if check is None:
        raise Conflict(
            f"Run a dry run of version {version.number} against {inventory.name} first "
            f"(POST /v1/playbooks/{playbook_id}/check); its result goes into the approval.",
            code="dry_run_required",
        )
    payload = apply_payload(version, inventory, check)
    if not approval_id:
        # Asking again while a request for exactly this apply is open returns that one.
        for open_req in ApprovalRequest.objects.filter(
            requested_by=user,
            action_type=APPLY_ACTION,
            origin=ApprovalOrigin.SYSTEM,
            consumed_at__isnull=True,
            status__in=[ApprovalStatus.PENDING, ApprovalStatus.APPROVED],
        ).order_by("-created_at")[:50]:
            if open_req.payload == payload:
                return "approval", open_req
        req = approvals.create_system_request(
            user,
            action_type=APPLY_ACTION,
            prompt=(
                f"Apply playbook {version.playbook} version {version.number} to inventory "
                f"{inventory.name} ({inventory.hosts.count()} host(s))"
            ),
            payload=payload,
            # The whole playbook: the operator approves all of it, not a first part.
            context=version.yaml,
        )
        return "approval", req
    pinned = req.payload.get("version_id")
    if pinned and pinned != str(version.id):
        raise Conflict(
            f"Approval {req.id} was given for version {req.payload.get('version')}; the playbook is now at "
            f"version {version.number}. Ask again.",
            code="approval_mismatch",
        )
    with transaction.atomic():
        approvals.consume(req.pk, expected_payload=payload, action_type=APPLY_ACTION)
        return "run", _start_run(user, RunKind.APPLY, version, inventory, approval=req)


def _runs():
    return PlaybookRun.objects.select_related(
        "version", "version__playbook", "inventory", "requested_by"
    )


def visible_runs(user):
    qs = _runs()
    return qs if sees_inventories(user) else qs.none()


def get_run(user, run_id) -> PlaybookRun:
    try:
        run = visible_runs(user).filter(pk=run_id).first()
    except (ValueError, ValidationError):
        run = None
    if run is None:
        raise NotFound(f"No playbook run {run_id}.")
    return run


def cancel_run(user, run_id) -> PlaybookRun:
    run = get_run(user, run_id)
    require(user, RUN_PERMISSION)
    if run.is_done:
        raise Conflict(f"Run {run.id} is already {run.status}.", code="invalid_state")
    PlaybookRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    if PlaybookRun.objects.filter(pk=run.pk, status=RunStatus.PENDING).update(
        status=RunStatus.CANCELED, finished_at=timezone.now(), error="canceled before it started"
    ):
        _wake(run.pk, RunStatus.CANCELED)
    audit.record("playbook.cancel", user=user, target=run, data=audit_origin(run.version))
    run.refresh_from_db()
    return run


def wait_for_run(run: PlaybookRun, timeout: float) -> PlaybookRun:
    """The run once it is done, or as it is after `timeout` seconds. The worker wakes the
    waiter when the run ends (finish_run); the row stays the truth."""
    return wakeups.wait_until(
        lambda: _runs().get(pk=run.pk),
        lambda current: current.is_done,
        key=run.pk,
        kind=RUN_WAKEUP,
        timeout=timeout,
    )


# --- the worker side of a run (apply.py) -------------------------------------------------------

RUN_WAKEUP = "playbook-run"


def group_for(run_id) -> str:
    """The channel group streaming one run's events."""
    return f"playbook-run.{str(run_id).replace('-', '')}"


def _wake(run_id, status: str) -> None:
    try:
        wakeups.publish(run_id, {"status": status}, kind=RUN_WAKEUP)
    except Exception:  # noqa: BLE001 - a waiter falls back to re-reading the row
        log.warning("could not publish the end of run %s", run_id)


def claim_run(run_id) -> PlaybookRun | None:
    """pending -> running, for the one attempt that runs it. A run found already running was
    claimed by an attempt whose worker died (this is a redelivery): that attempt is lost with
    its worker, so the run ends in error rather than being applied twice. None then."""
    if PlaybookRun.objects.filter(pk=run_id, status=RunStatus.PENDING).update(
        status=RunStatus.RUNNING, started_at=timezone.now()
    ):
        return _runs().get(pk=run_id)
    if PlaybookRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
        status=RunStatus.ERROR,
        error="the worker running this playbook stopped; check the targets and run again",
        finished_at=timezone.now(),
    ):
        _wake(run_id, RunStatus.ERROR)
    return None


def record_event(run: PlaybookRun, seq: int, event: str, host: str, task: str, data: dict) -> None:
    PlaybookEvent.objects.create(run=run, seq=seq, event=event, host=host, task=task, data=data)


def finish_run(
    run: PlaybookRun, status: str, *, error: str, host_stats: dict, failed_tasks: list, events: int
) -> None:
    """A run's end: the row, its audit event, the waiting request's wake-up and the
    websocket's `finished` message."""
    PlaybookRun.objects.filter(pk=run.pk).update(
        status=status,
        error=error,
        host_stats=host_stats,
        failed_tasks=failed_tasks,
        events_count=events,
        finished_at=timezone.now(),
    )
    audit.record(
        f"playbook.{run.kind}.{status}",
        user=run.requested_by,
        target=run,
        data={
            **audit_origin(run.version),
            "inventory": run.inventory.name,
            "hosts": host_stats,
            "error": error[:1000],
        },
    )
    _wake(run.pk, status)
    layer = get_channel_layer()
    if layer is not None:
        try:
            async_to_sync(layer.group_send)(
                group_for(run.pk),
                {
                    "type": "run.finished",
                    "status": status,
                    "host_stats": host_stats,
                    "error": error,
                },
            )
        except Exception:  # noqa: BLE001 - clients re-read the run
            log.warning("could not announce the end of run %s", run.pk)
