"""Celery tasks of the playbooks app: thin wrappers that take ids and hand them to the
module doing the work. The names keep the `sandboxes.` prefix they had before the app moved
out of sandboxes (a message queued before an upgrade finds its task; one of compute_diff or
generate_playbook from before they were operations names no operation and is dropped).

All of them are long (a diff reads a whole disk, a verification boots a replica and runs
Ansible twice, a run may take an hour): they run in the host's commands pool
(`kvm.<host>.commands`, core/queues.py), never holding the lifecycle pool's threads."""

from __future__ import annotations

import logging

from celery import shared_task

from core.queues import Work
from sandboxes import services
from sandboxes.choices import OperationKind, OperationStatus
from sandboxes.models import Operation
from sandboxes.tasks import TASK_OPTIONS, beating, register_operation_task, run_claimed

from . import apply, build, diff_compute, verify

log = logging.getLogger(__name__)


@shared_task(name="sandboxes.compute_diff", work=Work.COMMANDS, **TASK_OPTIONS)
def compute_diff(self, op_id: str) -> None:
    """A diff operation: read both states from the sandbox's disk on this host, compare."""
    run_claimed(op_id, diff_compute.run_operation)


@shared_task(name="sandboxes.generate_playbook", work=Work.COMMANDS, **TASK_OPTIONS)
def generate_playbook(self, op_id: str) -> None:
    """A generate_playbook operation: diff the two snapshots (if not yet), read the `to`
    state, write playbook version 1."""
    run_claimed(op_id, build.run_operation)


@shared_task(name="sandboxes.verify_playbook", work=Work.COMMANDS, **TASK_OPTIONS)
def verify_playbook(self, op_id: str) -> None:
    """One step of a replay verification (playbooks/verify.py); safe to run twice."""
    op = (
        Operation.objects.select_related("sandbox", "host", "requested_by").filter(pk=op_id).first()
    )
    if op is None or op.is_done:
        return
    if op.status == OperationStatus.PENDING:
        op = services.claim_operation(op_id)
        if op is None:
            return
    try:
        # Steps are not held (each re-enqueues the next); their beats keep the operation from
        # being taken as lost while the replica boots or the replay runs.
        services.beat_operation(op_id, hold=False)
        with beating(lambda: services.beat_operation(op_id, hold=False)):
            verify.step(self, op)
    except Exception as exc:  # noqa: BLE001 - the operation must end with the reason
        log.exception("verify %s failed", op_id)
        verify.abandon(op, f"{type(exc).__name__}: {exc}")


@shared_task(
    name="sandboxes.run_playbook", bind=True, acks_late=True, ignore_result=True, work=Work.COMMANDS
)
def run_playbook(self, run_id: str) -> None:
    """A dry run or an approved apply (playbooks/apply.py). Never applied twice: a
    redelivered message finds the run already claimed and records that it was lost."""
    apply.execute(run_id)


register_operation_task(OperationKind.DIFF, compute_diff)
register_operation_task(OperationKind.GENERATE_PLAYBOOK, generate_playbook)
register_operation_task(OperationKind.VERIFY_PLAYBOOK, verify_playbook)
