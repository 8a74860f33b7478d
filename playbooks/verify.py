"""Replay verification, on the agent sandbox's host: fork a replica at the `from` snapshot,
run the playbook there with ansible-runner, diff the replica against its own starting point,
compare with the agent's diff, run the playbook again (idempotent means changed=0), destroy
the replica. Waiting for the replica to boot is a re-enqueued step, never a sleep."""

from __future__ import annotations

import logging

from django.utils import timezone

from core import queues
from egress import services as egress
from sandboxes import provisioning, services
from sandboxes.choices import WAKEABLE_STATES, OperationStatus, SandboxState
from sandboxes.models import Operation, Sandbox

from . import reproduce, runner, runtime
from .diff_compute import compare_snapshots, stored_result
from .models import PlaybookVersion
from .state import snapshot_pair

log = logging.getLogger(__name__)

BEFORE, AFTER = "vsb-verify-before", "vsb-verify-after"
POLL_SECONDS = 2


def target_for(sandbox: Sandbox, name: str | None = None) -> runner.Target:
    cred = provisioning.credential_factory(sandbox)()
    return runner.Target(
        name=name or sandbox.name,
        host=sandbox.ssh_host or sandbox.ip_address,
        port=sandbox.ssh_port or 22,
        user=sandbox.ssh_username or "root",
        host_key=sandbox.host_key,
        private_key=cred.private_key,
        certificate=cred.certificate,
    )


def version_files(version: PlaybookVersion) -> dict[str, bytes]:
    return {f.name: bytes(f.content) for f in version.files.all()}


def _save(op: Operation, **fields) -> dict:
    op.result = {**op.result, **fields}
    services.record_operation_result(op.pk, op.result)
    return op.result


def _stats(run: runner.RunResult) -> dict:
    return {
        "status": run.status,
        "rc": run.rc,
        "hosts": {h: vars(s) for h, s in run.hosts.items()},
        "changed": run.changed,
        "failed_tasks": run.failed_tasks,
        "changed_tasks": run.changed_tasks,
    }


def step(task, op: Operation) -> None:
    """One step of a verify operation; re-enqueues itself while the replica boots."""
    version = PlaybookVersion.objects.select_related("playbook", "playbook__sandbox").get(
        pk=op.input["version_id"]
    )
    playbook = version.playbook
    origin = playbook.sandbox
    replica_id = op.result.get("replica_id")
    if replica_id is None:
        create = services.create_sandbox(
            op.requested_by or origin.owner,
            from_sandbox=origin.pk,
            from_snapshot=playbook.from_name,
            agent_id=f"verify:{origin.agent_id}"[:200],
            ttl_seconds=3 * 3600,
        )
        egress.copy_rules(origin, create.sandbox, op.requested_by or origin.owner)
        _save(op, replica_id=str(create.sandbox_id), replica=create.sandbox.name)
        services.report_progress(
            op.pk, 10, f"replica {create.sandbox.name} booting at {playbook.from_name}"
        )
        _again(task, op)
        return
    replica = Sandbox.objects.select_related("host", "source").get(pk=replica_id)
    if replica.state in (SandboxState.ERROR, SandboxState.DESTROYED, SandboxState.DESTROYING):
        _finish(
            op,
            OperationStatus.FAILED,
            error=f"the replica {replica.name} is {replica.state}: {replica.error}",
        )
        return
    if replica.state not in WAKEABLE_STATES:
        if op.deadline and timezone.now() > op.deadline:
            _destroy(replica, op)
            _finish(
                op, OperationStatus.FAILED, error=f"the replica {replica.name} did not become ready"
            )
            return
        _again(task, op)
        return
    if op.result.get("started_replay"):
        # A worker died in the middle: the replica holds a half-applied playbook.
        _destroy(replica, op)
        _finish(op, OperationStatus.FAILED, error="verification was interrupted; run it again")
        return
    _save(op, started_replay=True)
    try:
        result = _replay(op, version, replica)
    finally:
        _destroy(replica, op)
    _finish(op, OperationStatus.SUCCEEDED, result=result)


def _replay(op: Operation, version: PlaybookVersion, replica: Sandbox) -> dict:
    driver = provisioning.driver_for(replica)
    files = version_files(version)
    services.report_progress(op.pk, 30, "replica ready: snapshot before the replay")
    driver.snapshot_create(replica.name, BEFORE, "before the playbook replay")
    services.report_progress(op.pk, 40, "running the playbook on the replica")
    first = runner.run(
        version.yaml, files, [target_for(replica)], isolation=runtime.ansible_isolation()
    )
    services.report_progress(op.pk, 60, "diffing the replica")
    driver.snapshot_create(replica.name, AFTER, "after the playbook replay")
    replica_diff = compare_snapshots(replica, BEFORE, AFTER)
    playbook = version.playbook
    agent_diff = stored_result(playbook.sandbox, *snapshot_pair(playbook))
    verdict = reproduce.compare(agent_diff, replica_diff)
    services.report_progress(op.pk, 80, "running the playbook a second time")
    second = runner.run(
        version.yaml, files, [target_for(replica)], isolation=runtime.ansible_isolation()
    )
    idempotent = second.succeeded and second.changed == 0
    return {
        **op.result,
        "playbook_id": str(version.playbook_id),
        "version": version.number,
        "reproduces": first.succeeded and verdict["reproduces"],
        "residual": verdict["residual"],
        "first_run": _stats(first),
        "second_run": _stats(second),
        "idempotent": idempotent,
        "changed_on_second_run": second.changed,
    }


def _destroy(replica: Sandbox, op: Operation) -> None:
    try:
        services.destroy_sandbox(replica, op.requested_by)
    except services.Conflict:
        pass


def _again(task, op: Operation) -> None:
    queues.enqueue(task, str(op.pk), host=op.host.name, countdown=POLL_SECONDS)


def _finish(op: Operation, status: str, *, error: str = "", result: dict | None = None) -> None:
    services.finish_operation(
        op.pk, status, error=error, result=result, message="verified" if not error else "failed"
    )


def abandon(op: Operation, reason: str) -> None:
    """An unexpected error: no replica left behind, and the operation says why."""
    replica_id = op.result.get("replica_id")
    if replica_id:
        replica = Sandbox.objects.filter(pk=replica_id).first()
        if replica is not None:
            _destroy(replica, op)
    services.finish_operation(op.pk, OperationStatus.ERRORED, error=reason, message="failed")
