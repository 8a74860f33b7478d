"""The playbooks service layer: the only writer of diffs, playbooks and their versions."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from audit import services as audit
from core import wakeups
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, OperationTimeout
from sandboxes.choices import OperationKind, SandboxState, SnapshotStatus
from sandboxes.models import Operation, Sandbox, Snapshot
from sandboxes.services import enqueue, new_operation

from . import tasks
from .models import Diff, Playbook, PlaybookVersion

GENERATE_TIMEOUT = 900
EDIT_PERMISSION = "playbooks.change_playbook"


DIFF_TIMEOUT = 600


def get_diff(sandbox: Sandbox, user, from_name: str, to_name: str = Diff.NOW) -> Diff:
    """The diff between two states of the sandbox: snapshot names, or "now" for `to`. A diff
    of two snapshots is computed once and kept; one ending "now" is computed each time."""
    if not from_name:
        raise InvalidInput.field("from", "is required: a snapshot name.")
    if from_name == Diff.NOW:
        raise InvalidInput.field("from", "must be a snapshot name (only `to` may be now).")
    snaps = {}
    for field, name in (("from", from_name), ("to", to_name)):
        if name == Diff.NOW:
            snaps[field] = None
            continue
        snap = Snapshot.objects.filter(sandbox=sandbox, name=name).first()
        if snap is None:
            raise NotFound(
                f"Sandbox {sandbox.name} has no snapshot {name!r} ({field}); a diff compares two "
                "states of one sandbox.",
            )
        if snap.status != SnapshotStatus.READY:
            raise Conflict(f"Snapshot {name!r} is {snap.status}.", code="invalid_state")
        snaps[field] = snap
    if to_name == Diff.NOW and sandbox.state not in (SandboxState.READY, SandboxState.STOPPED):
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; a diff to now needs it ready or stopped.",
            code="invalid_state",
        )
    if to_name != Diff.NOW:
        kept = Diff.objects.filter(
            sandbox=sandbox, from_snapshot=snaps["from"], to_snapshot=snaps["to"], status="ready"
        ).first()
        if kept:
            return kept
    with transaction.atomic():
        diff = Diff.objects.create(
            sandbox=sandbox,
            from_name=from_name,
            to_name=to_name,
            from_snapshot=snaps["from"],
            to_snapshot=snaps["to"],
        )
        enqueue(tasks.compute_diff, sandbox.host, str(diff.pk))
    diff = wakeups.wait_until(
        lambda: Diff.objects.get(pk=diff.pk),
        lambda current: current.status != "pending",
        key=diff.pk,
        kind="diff",
        timeout=DIFF_TIMEOUT,
    )
    if diff.status == "pending":
        raise OperationTimeout(f"The diff is still being computed by host {sandbox.host.name}.")
    return diff


def _check_snapshot(sandbox: Sandbox, field: str, name: str) -> Snapshot:
    if not name:
        raise InvalidInput.field(field, "is required: a snapshot name.")
    if name == "now":
        raise InvalidInput.field(
            field,
            "must be a snapshot (a playbook reproduces a fixed state: take a snapshot first).",
        )
    snap = Snapshot.objects.filter(sandbox=sandbox, name=name).first()
    if snap is None:
        raise NotFound(f"Sandbox {sandbox.name} has no snapshot {name!r} ({field}).")
    if snap.status != SnapshotStatus.READY:
        raise Conflict(f"Snapshot {name!r} is {snap.status}.", code="invalid_state")
    return snap


def get_playbook(sandbox: Sandbox, user, from_name: str, to_name: str) -> Playbook:
    """The playbook from snapshot `from_name` to `to_name`, generated on the sandbox's host
    the first time (the request waits for it)."""
    # Keyed by the snapshots, not their names: one deleted and taken again is a new state.
    pair = {
        "from_snapshot": _check_snapshot(sandbox, "from", from_name),
        "to_snapshot": _check_snapshot(sandbox, "to", to_name),
    }
    playbook = Playbook.objects.filter(sandbox=sandbox, **pair).first()
    if playbook is not None and playbook.status == "ready":
        return playbook
    with transaction.atomic():
        if playbook is None:
            try:
                with transaction.atomic():
                    playbook = Playbook.objects.create(
                        sandbox=sandbox,
                        from_name=from_name,
                        to_name=to_name,
                        created_by=user,
                        **pair,
                    )
            except IntegrityError:
                playbook = Playbook.objects.get(sandbox=sandbox, **pair)
        elif playbook.status == "failed":
            Playbook.objects.filter(pk=playbook.pk, status="failed").update(
                status="pending", error=""
            )
        if playbook.status != "ready":
            enqueue(tasks.generate_playbook, sandbox.host, str(playbook.pk))
            audit.record(
                "playbook.generate",
                user=user,
                target=playbook,
                sandbox_id=sandbox.pk,
                agent=sandbox.agent_id,
                data={"from": from_name, "to": to_name},
            )
    playbook = wakeups.wait_until(
        lambda: Playbook.objects.get(pk=playbook.pk),
        lambda current: current.status != "pending",
        key=playbook.pk,
        kind="playbook",
        timeout=GENERATE_TIMEOUT,
    )
    if playbook.status == "pending":
        raise OperationTimeout(
            f"The playbook is still being generated by host {sandbox.host.name}."
        )
    return playbook


def visible_playbooks(user):
    qs = Playbook.objects.select_related("sandbox")
    if user.is_staff:
        return qs
    return qs.filter(sandbox__owner=user)


def get_version(user, playbook_id, number: int | None = None) -> PlaybookVersion:
    playbook = visible_playbooks(user).filter(pk=playbook_id).first()
    if playbook is None:
        raise NotFound(f"No playbook {playbook_id}.")
    versions = playbook.versions.all()
    version = (
        versions.filter(number=number).first() if number else versions.order_by("-number").first()
    )
    if version is None:
        raise NotFound(f"Playbook {playbook_id} has no version {number}.")
    return version


def edit(playbook: Playbook, user, yaml_text: str, note: str = "") -> PlaybookVersion:
    """An operator's edit: a new version (the old ones stay, an approval pins one)."""
    from .build import store_version

    if not user.has_perm(EDIT_PERMISSION):
        raise Forbidden(f"Editing playbooks needs the {EDIT_PERMISSION} permission.")
    if not yaml_text.strip():
        raise InvalidInput.field("yaml", "must not be empty.")
    yaml_text = yaml_text.rstrip("\n") + "\n"
    base = playbook.latest
    files = {f.name: bytes(f.content) for f in base.files.all()} if base else {}
    version = store_version(
        playbook,
        yaml_text,
        files,
        user=user,
        generated=False,
        note=note,
        warnings=base.warnings if base else [],
    )
    audit.record(
        "playbook.edit",
        user=user,
        target=playbook,
        sandbox_id=playbook.sandbox_id,
        data={"version": version.number, "sha256": version.sha256, "note": note[:500]},
    )
    return version


VERIFY_DEADLINE_SECONDS = 3600


def start_verify(
    sandbox: Sandbox, user, from_name: str, to_name: str, version: int | None = None
) -> Operation:
    """Queue a replay verification of the playbook (latest version unless `version`)."""
    playbook = get_playbook(sandbox, user, from_name, to_name)
    if playbook.status != "ready":
        raise Conflict(
            f"The playbook could not be generated: {playbook.error}", code="playbook_failed"
        )
    chosen = playbook.versions.filter(number=version).first() if version else playbook.latest
    if chosen is None:
        raise NotFound(f"Playbook {playbook.id} has no version {version}.")
    if chosen.syntax_ok is False:
        raise Conflict(
            f"Version {chosen.number} does not pass ansible-playbook --syntax-check: {chosen.syntax_output[-500:]}",
            code="syntax_error",
        )
    with transaction.atomic():
        op = new_operation(
            OperationKind.VERIFY_PLAYBOOK,
            sandbox,
            user,
            deadline_seconds=VERIFY_DEADLINE_SECONDS,
            playbook_id=str(playbook.id),
            version=chosen.number,
            version_id=str(chosen.id),
        )
        enqueue(tasks.verify_playbook, sandbox.host, str(op.pk))
    return op
