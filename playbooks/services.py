"""The playbooks service layer for diffs, playbooks and their versions: the only writer of
those rows (`runs.py` is the one for inventories, runs and their events).

Computing a diff and generating a playbook are slow steps on the sandbox's host, so they are
Operations (kinds `diff` and `generate_playbook`) like verifying one: a request finds a kept
result at once, or queues the operation (joining the one already under way for the same
thing) and the caller answers with it or waits for it. The worker side (diff_compute.py,
build.py) records its outcome through the functions at the end."""

from __future__ import annotations

import hashlib
import json

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from audit import services as audit
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, OperationFailed
from sandboxes import services as sandbox_services
from sandboxes.choices import (
    WAKEABLE_STATES,
    OperationKind,
    OperationStatus,
    SandboxState,
    SnapshotStatus,
)
from sandboxes.models import Operation, Sandbox, Snapshot

from . import runtime, tasks
from .choices import ResultStatus
from .models import Diff, Playbook, PlaybookFile, PlaybookVersion

# How long a request waits for a diff or a playbook (then 504; the work goes on), and how
# long the operation may take before the reaper calls it lost.
DIFF_TIMEOUT = 600
GENERATE_TIMEOUT = 900
MAKE_DEADLINE_SECONDS = 1800
VERIFY_DEADLINE_SECONDS = 3600
EDIT_PERMISSION = "playbooks.change_playbook"
OPEN = (OperationStatus.PENDING, OperationStatus.RUNNING)


def _queue(kind: str, task, sandbox: Sandbox, user, deadline: int, **input) -> Operation:
    """A new operation of `kind` on the sandbox's host, its task sent when the caller's
    transaction commits; a 503 at once while the host has no live worker."""
    sandbox_services.require_live_host(sandbox.host, sandbox)
    op = sandbox_services.new_operation(kind, sandbox, user, deadline_seconds=deadline, **input)
    sandbox_services.enqueue(task, sandbox.host, str(op.pk))
    return op


def _under_way(kind: str, key: str, ids) -> Operation | None:
    """The open operation of `kind` working on one of these rows (`input[key]` is its id)."""
    ids = [str(pk) for pk in ids]
    if not ids:
        return None
    return (
        Operation.objects.filter(kind=kind, status__in=OPEN, **{f"input__{key}__in": ids})
        .order_by("created_at")
        .first()
    )


def _ready_snapshot(sandbox: Sandbox, field: str, name: str, why: str = "") -> Snapshot:
    snap = Snapshot.objects.filter(sandbox=sandbox, name=name).first()
    if snap is None:
        raise NotFound(f"Sandbox {sandbox.name} has no snapshot {name!r} ({field}){why}.")
    if snap.status != SnapshotStatus.READY:
        raise Conflict(f"Snapshot {name!r} is {snap.status}.", code="invalid_state")
    return snap


# --- diffs -------------------------------------------------------------------------------------


def request_diff(
    sandbox: Sandbox, user, from_name: str, to_name: str = Diff.NOW, *, diff_id=None
) -> tuple[Diff, Operation | None]:
    """The diff between two states of the sandbox: snapshot names, or "now" for `to`; or,
    with `diff_id`, one computed before (a diff to now is not kept for later requests, but
    its operation's result names it). (diff, None) when it is there: a diff of two snapshots
    is computed once and kept. Otherwise (pending diff, its diff operation)."""
    if diff_id:
        return _diff_by_id(sandbox, diff_id)
    if not from_name:
        raise InvalidInput.field("from", "is required: a snapshot name.")
    if from_name == Diff.NOW:
        raise InvalidInput.field("from", "must be a snapshot name (only `to` may be now).")
    why = "; a diff compares two states of one sandbox"
    pair = {
        "from_snapshot": _ready_snapshot(sandbox, "from", from_name, why),
        "to_snapshot": None
        if to_name == Diff.NOW
        else _ready_snapshot(sandbox, "to", to_name, why),
    }
    if to_name == Diff.NOW and sandbox.state not in (*WAKEABLE_STATES, SandboxState.STOPPED):
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; a diff to now needs it ready or stopped.",
            code="invalid_state",
        )
    if to_name != Diff.NOW:
        kept = Diff.objects.filter(sandbox=sandbox, status=ResultStatus.READY, **pair).first()
        if kept:
            return kept, None
        pending = Diff.objects.filter(sandbox=sandbox, status=ResultStatus.PENDING, **pair)
        op = _under_way(OperationKind.DIFF, "diff_id", pending.values_list("pk", flat=True))
        if op is not None:
            return Diff.objects.get(pk=op.input["diff_id"]), op
    with transaction.atomic():
        diff = Diff.objects.create(sandbox=sandbox, from_name=from_name, to_name=to_name, **pair)
        op = _queue(
            OperationKind.DIFF,
            tasks.compute_diff,
            sandbox,
            user,
            MAKE_DEADLINE_SECONDS,
            diff_id=str(diff.pk),
            **{"from": from_name, "to": to_name},
        )
    return diff, op


def _diff_by_id(sandbox: Sandbox, diff_id) -> tuple[Diff, Operation | None]:
    try:
        diff = Diff.objects.filter(sandbox=sandbox, pk=diff_id).first()
    except ValidationError:  # not a UUID
        diff = None
    if diff is None:
        raise NotFound(f"Sandbox {sandbox.name} has no diff {diff_id}.")
    if diff.status == ResultStatus.PENDING:
        op = _under_way(OperationKind.DIFF, "diff_id", [diff.pk])
        if op is not None:
            return diff, op
    return _diff_made(diff, None), None


def wait_for_diff(diff: Diff, op: Operation) -> Diff:
    """The diff once its operation is done (OperationTimeout after DIFF_TIMEOUT seconds), or
    OperationFailed saying why there is none."""
    op = sandbox_services.wait_for_operation(op, DIFF_TIMEOUT)
    return _diff_made(Diff.objects.filter(pk=diff.pk).first(), op)


def _diff_made(diff: Diff | None, op: Operation | None) -> Diff:
    if diff is None or diff.status != ResultStatus.READY:
        reason = (diff.error if diff else "") or (op.error if op else "") or "it was not computed"
        raise OperationFailed(f"the diff failed: {reason}")
    return diff


# --- playbooks ---------------------------------------------------------------------------------


def _playbook_snapshot(sandbox: Sandbox, field: str, name: str) -> Snapshot:
    if not name:
        raise InvalidInput.field(field, "is required: a snapshot name.")
    if name == Diff.NOW:
        raise InvalidInput.field(
            field,
            "must be a snapshot (a playbook reproduces a fixed state: take a snapshot first).",
        )
    return _ready_snapshot(sandbox, field, name)


def request_playbook(
    sandbox: Sandbox, user, from_name: str, to_name: str
) -> tuple[Playbook, Operation | None]:
    """The playbook from snapshot `from_name` to `to_name`: (playbook, None) when it is
    ready, else (playbook, the operation generating it on the sandbox's host). A failed
    playbook is generated again."""
    # Keyed by the snapshots, not their names: one deleted and taken again is a new state.
    pair = {
        "from_snapshot": _playbook_snapshot(sandbox, "from", from_name),
        "to_snapshot": _playbook_snapshot(sandbox, "to", to_name),
    }
    playbook = Playbook.objects.filter(sandbox=sandbox, **pair).first()
    if playbook is not None and playbook.status == ResultStatus.READY:
        return playbook, None
    if playbook is not None and playbook.status == ResultStatus.PENDING:
        op = _under_way(OperationKind.GENERATE_PLAYBOOK, "playbook_id", [playbook.pk])
        if op is not None:
            return playbook, op
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
        if Playbook.objects.filter(pk=playbook.pk, status=ResultStatus.FAILED).update(
            status=ResultStatus.PENDING, error=""
        ):
            playbook.status, playbook.error = ResultStatus.PENDING, ""
        op = _queue(
            OperationKind.GENERATE_PLAYBOOK,
            tasks.generate_playbook,
            sandbox,
            user,
            MAKE_DEADLINE_SECONDS,
            playbook_id=str(playbook.pk),
            **{"from": from_name, "to": to_name},
        )
        audit.record(
            "playbook.generate",
            user=user,
            target=playbook,
            sandbox_id=sandbox.pk,
            agent=sandbox.agent_id,
            data={"from": from_name, "to": to_name},
        )
    return playbook, op


def wait_for_playbook(playbook: Playbook, op: Operation) -> Playbook:
    """The playbook once its generation is done (OperationTimeout after GENERATE_TIMEOUT
    seconds); OperationFailed when it could not be generated."""
    op = sandbox_services.wait_for_operation(op, GENERATE_TIMEOUT)
    playbook.refresh_from_db()
    if playbook.status != ResultStatus.READY:
        raise OperationFailed(
            f"generating the playbook failed: {playbook.error or op.error or op.message}"
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
        syntax=runtime.syntax_check(yaml_text, files),
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


def store_version(
    playbook: Playbook,
    yaml_text: str,
    files: dict[str, bytes],
    *,
    syntax: tuple[bool, str],
    user=None,
    generated: bool,
    warnings=(),
    skipped=(),
    note: str = "",
) -> PlaybookVersion:
    """The next version of the playbook with its files; `syntax` is what
    `ansible-playbook --syntax-check` said of it (runtime.syntax_check)."""
    with transaction.atomic():
        number = (
            playbook.versions.order_by("-number").values_list("number", flat=True).first() or 0
        ) + 1
        version = PlaybookVersion.objects.create(
            playbook=playbook,
            number=number,
            yaml=yaml_text,
            sha256=hashlib.sha256(yaml_text.encode()).hexdigest(),
            generated=generated,
            warnings=list(warnings),
            skipped=list(skipped),
            syntax_ok=syntax[0],
            syntax_output=syntax[1],
            note=note,
            created_by=user,
        )
        PlaybookFile.objects.bulk_create(
            PlaybookFile(
                version=version,
                name=name,
                content=data,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
            for name, data in files.items()
        )
    return version


def start_verify(
    sandbox: Sandbox, user, from_name: str, to_name: str, version: int | None = None
) -> Operation:
    """Queue a replay verification of the playbook (latest version unless `version`). A
    playbook not generated yet is generated first: this waits for that, as it always did,
    so that a bad version or a failed playbook is still refused here."""
    playbook, generating = request_playbook(sandbox, user, from_name, to_name)
    if generating is not None:
        sandbox_services.wait_for_operation(generating, GENERATE_TIMEOUT)
        playbook.refresh_from_db()
    if playbook.status != ResultStatus.READY:
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
        return _queue(
            OperationKind.VERIFY_PLAYBOOK,
            tasks.verify_playbook,
            sandbox,
            user,
            VERIFY_DEADLINE_SECONDS,
            playbook_id=str(playbook.id),
            version=chosen.number,
            version_id=str(chosen.id),
        )


# --- the worker side: outcomes of diff and generate_playbook operations ----------------------


def new_diff(sandbox: Sandbox, from_snapshot: Snapshot, to_snapshot: Snapshot) -> Diff:
    """A pending diff between two snapshots, computed at once by the worker that needs it
    (generation and verification run on the sandbox's host already)."""
    return Diff.objects.create(
        sandbox=sandbox,
        from_name=from_snapshot.name,
        to_name=to_snapshot.name,
        from_snapshot=from_snapshot,
        to_snapshot=to_snapshot,
    )


def finish_diff(diff_id, *, result: dict | None = None, error: str = "") -> Diff | None:
    """Record a pending diff's outcome (once: a second attempt finds it done); the row as it
    is then, None if it was deleted (with its snapshot)."""
    if result is not None:
        fields = {
            "status": ResultStatus.READY,
            "result": json.dumps(result),
            "duration_ms": result["duration_ms"],
        }
    else:
        fields = {"status": ResultStatus.FAILED, "error": error}
    Diff.objects.filter(pk=diff_id, status=ResultStatus.PENDING).update(**fields)
    return Diff.objects.filter(pk=diff_id).first()


def store_generated(playbook: Playbook, out, syntax: tuple[bool, str]) -> None:
    """The generated version of a pending playbook, and the playbook ready: in one
    transaction under a row lock, so that a second attempt of the same generation finds the
    playbook ready and stores nothing."""
    with transaction.atomic():
        locked = Playbook.objects.select_for_update().filter(pk=playbook.pk).first()
        if locked is None or locked.status != ResultStatus.PENDING:
            return
        store_version(
            locked,
            out.yaml,
            out.files,
            syntax=syntax,
            generated=True,
            warnings=out.warnings,
            skipped=out.skipped,
            user=locked.created_by,
        )
        Playbook.objects.filter(pk=playbook.pk).update(status=ResultStatus.READY)


def fail_playbook(playbook_id, error: str) -> None:
    Playbook.objects.filter(pk=playbook_id, status=ResultStatus.PENDING).update(
        status=ResultStatus.FAILED, error=error
    )


def close_diff_operation(op: Operation, diff: Diff | None) -> None:
    if diff is not None and diff.status == ResultStatus.READY:
        sandbox_services.finish_operation(
            op.pk,
            OperationStatus.SUCCEEDED,
            message="diff computed",
            result={"diff_id": str(diff.pk), "summary": json.loads(diff.result).get("summary")},
        )
    else:
        error = diff.error if diff is not None else "the diff was deleted with its snapshot"
        sandbox_services.finish_operation(
            op.pk, OperationStatus.FAILED, error=error, message="failed"
        )


def close_generate_operation(op: Operation, playbook: Playbook | None) -> None:
    if playbook is not None and playbook.status == ResultStatus.READY:
        latest = playbook.latest
        sandbox_services.finish_operation(
            op.pk,
            OperationStatus.SUCCEEDED,
            message="playbook generated",
            result={"playbook_id": str(playbook.pk), "version": latest.number if latest else None},
        )
    else:
        error = playbook.error if playbook is not None else "the playbook was deleted"
        sandbox_services.finish_operation(
            op.pk, OperationStatus.FAILED, error=error, message="failed"
        )
