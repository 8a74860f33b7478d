"""Worker-side computation of a Diff: both states are read from the sandbox's own disk on the
host by the unprivileged guest reader (drivers/guest_reader.py, docs/diff.md). "now" of a running sandbox is a
temporary internal snapshot, taken after flushing the guest's page cache and deleted after.

Reading disks instead of asking the guest means a change typed in any shell shows up, a
compromised guest cannot hide one, and nothing is written into the guest that would pollute
the next diff."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

from django.utils import timezone

import diffing
from core.conf import vsb
from sandboxes import idle, provisioning
from sandboxes import services as sandbox_services
from sandboxes.choices import SandboxState
from sandboxes.drivers.domain_xml import OVERLAY_NAME
from sandboxes.models import Command, Snapshot
from sandboxes.runtime import get_guest_reader

from . import services
from .choices import ResultStatus
from .models import Diff

log = logging.getLogger(__name__)

CONTENT_LIMIT = 64 * 1024
MAX_CONTENT_FILES = 2000


def _excludes() -> tuple[str, ...]:
    return tuple(diffing.DEFAULT_EXCLUDES) + tuple(vsb("DIFF_EXTRA_EXCLUDES"))


def _commands_between(diff: Diff, start, end) -> list[dict]:
    qs = Command.objects.filter(sandbox=diff.sandbox)
    if start:
        qs = qs.filter(started_at__gte=start)
    if end:
        qs = qs.filter(started_at__lte=end)
    return [
        {
            "id": str(c.id),
            "command": c.command,
            "exit_code": c.exit_code,
            "started_at": c.started_at.isoformat(),
        }
        for c in qs.order_by("started_at")[:1000]
    ]


def compare_snapshots(sandbox, before_pick: str | None, after_pick: str | None) -> dict:
    """The diff between two driver-level snapshots of the sandbox's overlay (None: the disk
    as it is, for a stopped sandbox). No rows needed: replay verification diffs snapshots
    it took itself. Both states are read by the unprivileged guest reader, in userspace."""
    overlay = os.path.join(sandbox.workdir, OVERLAY_NAME)
    reader = get_guest_reader()
    params = {
        "excludes": list(_excludes()),
        "content_limit": CONTENT_LIMIT,
        "max_content_files": MAX_CONTENT_FILES,
        "hash_limit": vsb("DIFF_HASH_LIMIT"),
    }
    with reader.snapshot_copies(overlay, [before_pick, after_pick], sandbox.workdir) as images:
        return reader.run("diff", params, images)


def compute(diff: Diff) -> dict:
    sandbox = diff.sandbox
    if sandbox.state in idle.IDLE and Diff.NOW in (diff.from_name, diff.to_name):
        # "now" of a running guest is a snapshot flushed through its agent: woken first.
        sandbox = idle.ensure_awake(sandbox)
    driver = provisioning.driver_for(sandbox)
    started = time.monotonic()
    temporary = None
    times = {}
    try:
        picks = []
        for name, snap in ((diff.from_name, diff.from_snapshot), (diff.to_name, diff.to_snapshot)):
            if snap is not None:
                picks.append(snap.name)
                times[name] = snap.taken_at
            elif name != Diff.NOW:
                raise RuntimeError(f"snapshot {name!r} was deleted")
            elif sandbox.state == SandboxState.READY:
                temporary = temporary or f"vsb-diff-{uuid.uuid4().hex[:12]}"
                driver.snapshot_create(sandbox.name, temporary, "temporary, for a diff")
                picks.append(temporary)
                times[name] = timezone.now()
            else:
                picks.append(None)  # a stopped sandbox: its disk as it is
                times[name] = timezone.now()
        result = compare_snapshots(sandbox, picks[0], picks[1])
    finally:
        if temporary:
            driver.snapshot_delete(sandbox.name, temporary)
    result["commands"] = _commands_between(diff, times[diff.from_name], times[diff.to_name])
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    return result


def stored_result(sandbox, from_snapshot: Snapshot, to_snapshot: Snapshot) -> dict:
    """The result of the diff between two snapshots, computed on this host if it is not
    stored yet (playbook generation and verification run on the sandbox's host)."""
    diff = Diff.objects.filter(
        sandbox=sandbox,
        from_snapshot=from_snapshot,
        to_snapshot=to_snapshot,
        status=ResultStatus.READY,
    ).first()
    if diff is None:
        diff = compute_and_store(services.new_diff(sandbox, from_snapshot, to_snapshot).pk)
    if diff is None:
        raise RuntimeError("the diff was deleted with its snapshot")
    if diff.status != ResultStatus.READY:
        raise RuntimeError(f"the diff failed: {diff.error}")
    return json.loads(diff.result)


def compute_and_store(diff_id) -> Diff | None:
    """Compute a pending Diff row on this host and store the outcome; the row as it is then
    (None if it was deleted with its snapshot)."""
    diff = (
        Diff.objects.select_related("sandbox", "sandbox__host", "from_snapshot", "to_snapshot")
        .filter(pk=diff_id)
        .first()
    )
    if diff is None or diff.status != ResultStatus.PENDING:
        return diff
    try:
        return services.finish_diff(diff_id, result=compute(diff))
    except Exception as exc:  # noqa: BLE001 - the diff must end with the reason
        log.exception("diff %s failed", diff_id)
        return services.finish_diff(diff_id, error=f"{type(exc).__name__}: {exc}")


def run_operation(op) -> None:
    """The one step of a diff operation, safe to run twice: a diff an earlier attempt
    finished just closes the operation."""
    diff_id = op.input.get("diff_id")
    sandbox_services.report_progress(op.pk, 10, "reading both states from the sandbox's disk")
    services.close_diff_operation(op, compute_and_store(diff_id))
