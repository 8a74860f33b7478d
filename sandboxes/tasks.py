"""Celery tasks: thin wrappers that take ids, reload, check that the work is still wanted,
call the driver through `provisioning`, and record the outcome through `services`.

Every task here runs on the sandbox host's lifecycle queue (`kvm.<host>`), except commands
(`kvm.<host>.commands`, a pool of their own: core/queues.py) and the periodic sweeps, which
run on `control` and only enqueue work for the hosts."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator

from celery import shared_task
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from core import queues, wakeups
from core.conf import vsb

from . import idle, lifecycle, provisioning, services
from .choices import (
    CommandStatus,
    OperationKind,
    OperationStatus,
    SandboxState,
    SourceKind,
)
from .drivers.base import RUNNING, DriverError
from .models import Command, Operation

log = logging.getLogger(__name__)

TASK_OPTIONS = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
}


def _is_transient(exc: Exception) -> bool:
    return bool(getattr(exc, "transient", False))


def _retry_or_fail(task, op: Operation, exc: Exception, on_fail) -> None:
    """Transient errors are retried with exponential backoff, a bounded number of times;
    anything else (or the last attempt) fails the operation with the error's message."""
    if _is_transient(exc) and op.attempt < vsb("TASK_MAX_ATTEMPTS"):
        countdown = min(2**op.attempt, 30)
        services.report_progress(op.pk, op.progress, f"retrying after: {exc}", quiet_for=countdown)
        raise task.retry(exc=exc, countdown=countdown, max_retries=None)
    on_fail(f"{exc}")


@contextlib.contextmanager
def beating(beat: Callable[[], None], every: float | None = None) -> Iterator[None]:
    """Call `beat` (a service writing a sign of life) every `every` seconds from a thread
    while the block runs, so long steps (a clone, a diff, a one-hour command) are not taken
    as lost by `services.resend_lost_work`. A failed beat (the database restarting) is tried
    again a second later. Inside a transaction (unit tests) there is no thread: it could not
    see the rows, and would wait on their locks."""
    if connection.in_atomic_block:
        yield
        return
    stop = threading.Event()
    every = every or services.BEAT_SECONDS

    def loop() -> None:
        wait = every
        while not stop.wait(wait):
            try:
                close_old_connections()
                beat()
                wait = every
            except Exception:  # noqa: BLE001 - a missed beat must not end the loop
                log.warning("heartbeat failed; trying again", exc_info=True)
                wait = 1.0
            # Not a database connection held between beats: a host's commands pool beats
            # for up to VSB_WORKER_COMMANDS_THREADS commands at once, for an hour each.
            connection.close()

    thread = threading.Thread(target=loop, name="vsb-op-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def run_claimed(op_id: str, body: Callable[[Operation], None]) -> None:
    """Claim the operation (`services.claim_operation`), run `body` with it while holding
    the claim, and let go when it returns: not at all when the operation is done or another
    worker holds it."""
    op = services.claim_operation(op_id)
    if op is None:
        return
    try:
        with beating(lambda: services.beat_operation(op_id, hold=True)):
            body(op)
    finally:
        try:
            services.release_operation(op_id)
        except Exception:  # noqa: BLE001 - the hold expires by itself
            log.warning("could not release operation %s", op_id, exc_info=True)


def _fail_create(op: Operation, reason: str) -> None:
    """A create that cannot finish leaves nothing behind: no domain, no disk."""
    sandbox = op.sandbox
    tail = provisioning.console_tail(sandbox)
    try:
        provisioning.teardown(sandbox)
    except DriverError as exc:
        reason = f"{reason} (cleanup also failed: {exc})"
    if tail:
        reason = f"{reason}\n--- console (last lines) ---\n{tail}"
    provisioning.mark_error(sandbox, reason)
    services.finish_operation(op.pk, OperationStatus.FAILED, error=reason, message="failed")


def _fail_keep(op: Operation, reason: str) -> None:
    """A failed start/stop keeps the disk: the agent's work is on it."""
    tail = provisioning.console_tail(op.sandbox) if op.kind == OperationKind.START else ""
    if tail:
        reason = f"{reason}\n--- console (last lines) ---\n{tail}"
    provisioning.mark_error(op.sandbox, reason)
    services.finish_operation(op.pk, OperationStatus.FAILED, error=reason, message="failed")


def _failer(op: Operation):
    return (
        (lambda reason: _fail_create(op, reason))
        if op.kind == OperationKind.CREATE
        else (lambda reason: _fail_keep(op, reason))
    )


def _resumed(op: Operation) -> bool:
    """For a start or restore resumed after a worker restart: finish or hand over to the
    readiness poll when an earlier attempt already got past the slow step. True if handled."""
    state = op.sandbox.state
    if state in (SandboxState.READY, SandboxState.STOPPED):
        services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message=state)
        return True
    if state == SandboxState.WAITING_FOR_IP:
        _enqueue_wait(op, countdown=0)
        return True
    return False


def _not_admitted(op: Operation) -> bool:
    """A boot still waiting for its host's boot slot (a stray message: a resend, a worker's
    recovery): nothing to do; its admission sends the task again (services.admit_boots)."""
    return op.sandbox.state == SandboxState.QUEUED


def operation_task(name: str):
    """A task carrying one Operation, by id: the body runs with the claimed Operation, and
    not at all when the operation is done or another worker holds it (`claim_operation`)."""

    def register(body):
        @shared_task(name=name, **TASK_OPTIONS)
        @functools.wraps(body, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def task(self, op_id: str) -> None:
            run_claimed(op_id, lambda op: body(self, op))

        return task

    return register


BANNER_PROBE_SECONDS = 5.0


def _enqueue_wait(op: Operation, countdown: float) -> None:
    queues.enqueue(wait_ready, str(op.pk), host=op.host.name, countdown=countdown)


@operation_task("sandboxes.provision_sandbox")
def provision_sandbox(self, op: Operation) -> None:
    sandbox = op.sandbox
    if _not_admitted(op):
        return
    if op.attempt > vsb("TASK_MAX_ATTEMPTS"):
        _fail_create(op, f"gave up after {op.attempt - 1} attempts")
        return
    if sandbox.state in (SandboxState.DESTROYING, SandboxState.DESTROYED, SandboxState.ERROR):
        services.finish_operation(
            op.pk,
            OperationStatus.FAILED,
            error=f"sandbox became {sandbox.state} before it was created",
        )
        return
    if sandbox.state in (SandboxState.READY, SandboxState.STOPPED):
        # A previous attempt got this far before its worker died: the work is done.
        services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message=sandbox.state)
        return
    try:
        if sandbox.state == SandboxState.REQUESTED:
            lifecycle.transition(
                sandbox.pk, SandboxState.PROVISIONING, expected=[SandboxState.REQUESTED]
            )
        services.report_progress(op.pk, 10, "cloning disk (qcow2 linked clone)")
        provisioning.ensure_free_port(sandbox)
        info = provisioning.driver_for(sandbox).clone(provisioning.clone_spec(sandbox))
        sandbox.refresh_from_db()
        if sandbox.state not in (
            SandboxState.PROVISIONING,
            SandboxState.BOOTING,
            SandboxState.WAITING_FOR_IP,
        ):
            # Destroyed while we were cloning: do not leave our domain behind.
            provisioning.teardown(sandbox)
            services.finish_operation(
                op.pk, OperationStatus.FAILED, error=f"sandbox became {sandbox.state}"
            )
            return
        if not op.input.get("auto_start", True):
            lifecycle.transition(
                sandbox.pk, SandboxState.STOPPED, expected=[SandboxState.PROVISIONING]
            )
            services.finish_operation(
                op.pk,
                OperationStatus.SUCCEEDED,
                message="created (not started)",
                result={"domain": info.name},
            )
            return
        services.report_progress(op.pk, 30, "starting VM")
        provisioning.driver_for(sandbox).start(sandbox.name)
        lifecycle.transition(sandbox.pk, SandboxState.BOOTING, expected=[SandboxState.PROVISIONING])
        services.report_progress(op.pk, 40, "booting: waiting for SSH")
    except Exception as exc:  # noqa: BLE001 - every failure must end in a recorded state
        log.exception("provision of %s failed", sandbox.name)
        _retry_or_fail(self, op, exc, lambda reason: _fail_create(op, reason))
        return
    _enqueue_wait(op, countdown=1.0)


@operation_task("sandboxes.start_sandbox")
def start_sandbox(self, op: Operation) -> None:
    sandbox = op.sandbox
    if _not_admitted(op) or _resumed(op):
        return
    if sandbox.state != SandboxState.BOOTING:
        services.finish_operation(
            op.pk, OperationStatus.FAILED, error=f"sandbox is {sandbox.state}"
        )
        return
    try:
        services.report_progress(op.pk, 20, "starting VM")
        provisioning.check_port_before_start(sandbox)
        provisioning.driver_for(sandbox).start(sandbox.name)
        services.report_progress(op.pk, 40, "booting: waiting for SSH")
    except Exception as exc:  # noqa: BLE001
        _retry_or_fail(self, op, exc, lambda reason: _fail_keep(op, reason))
        return
    _enqueue_wait(op, countdown=1.0)


@shared_task(name="sandboxes.wait_ready", **TASK_OPTIONS)
def wait_ready(self, op_id: str) -> None:
    """One readiness check; re-enqueues itself until the guest answers SSH or the deadline
    passes. It never sleeps in the worker."""
    from .remote import ssh

    op = (
        Operation.objects.select_related("sandbox", "sandbox__source", "sandbox__host")
        .filter(pk=op_id)
        .first()
    )
    if op is None or op.is_done:
        return
    sandbox = op.sandbox
    poll = vsb("READY_POLL_SECONDS")
    fail = _failer(op)
    if sandbox.state == SandboxState.READY:
        # Another poll of the same operation got there first (a redelivered message after a
        # worker restart runs beside the resumed one).
        services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message="ready")
        return
    if sandbox.state not in (SandboxState.BOOTING, SandboxState.WAITING_FOR_IP):
        services.finish_operation(
            op.pk, OperationStatus.FAILED, error=f"sandbox became {sandbox.state} while booting"
        )
        return
    started = op.started_at or op.created_at
    if (timezone.now() - started).total_seconds() > vsb("READY_TIMEOUT_SECONDS"):
        fail(f"the guest did not answer SSH within {vsb('READY_TIMEOUT_SECONDS')} s")
        return
    try:
        state = provisioning.driver_for(sandbox).state(sandbox.name)
    except Exception as exc:  # noqa: BLE001
        if _is_transient(exc):
            _enqueue_wait(op, poll * 4)
        else:
            fail(f"cannot read the domain state: {exc}")
        return
    if state != RUNNING:
        fail(f"the guest stopped while booting (domain state: {state})")
        return
    if sandbox.state == SandboxState.BOOTING:
        lifecycle.transition(
            sandbox.pk, SandboxState.WAITING_FOR_IP, expected=[SandboxState.BOOTING]
        )
        services.report_progress(op.pk, 50, "waiting for the guest's network and SSH")
    services.report_progress(op.pk, op.progress, op.message)  # heartbeat

    if sandbox.network_mode != "port_forward":
        address = provisioning.discover_address(sandbox)
        if not address:
            _enqueue_wait(op, poll * 4)
            return
        services.set_sandbox_fields(sandbox.pk, ip_address=address, ssh_host=address)
        sandbox.ip_address = sandbox.ssh_host = address

    console_key = provisioning.console_host_key(sandbox)
    # The project's image prints its host key on the console right before sshd starts, on
    # every boot, and the console log starts afresh with each start of the domain. A first
    # boot must print it before we connect (it is what we pin). A restart waits for it too:
    # probes sent earlier leave half-open slirp connections that all reach sshd the moment
    # it listens, a storm of pre-auth children a TCG guest under load may never work off.
    # A restored memory snapshot does not boot: its handshake is checked against the pin.
    expects_console_key = (
        op.kind != OperationKind.RESTORE
        and sandbox.source.kind == SourceKind.IMAGE
        and bool(sandbox.source.kernel)
    )
    if expects_console_key and console_key is None:
        _enqueue_wait(op, poll)
        return
    if sandbox.host_key and console_key and console_key != sandbox.host_key:
        fail(
            "the guest presented a different SSH host key than the one pinned at its first boot "
            f"(pinned {ssh.fingerprint(sandbox.host_key)}, now {ssh.fingerprint(console_key)})"
        )
        return
    pinned = sandbox.host_key or console_key
    # The banner probe keeps a booting guest's half-open slirp connections from piling up;
    # a restored guest is already listening, so go straight to the login. Its timeout is long:
    # a guest not listening yet refuses at once (the probe returns early), and one that has
    # accepted but is slow to answer (starved of CPU) must be waited for on that connection,
    # not sent another every poll: each one is an sshd re-exec in the guest, and a starved
    # TCG guest with dozens queued (seen: 63 in CLOSE-WAIT) never answers any of them.
    booting = op.kind != OperationKind.RESTORE
    if booting and not ssh.probe_ssh_banner(
        sandbox.ssh_host, sandbox.ssh_port or 22, timeout=BANNER_PROBE_SECONDS
    ):
        _enqueue_wait(op, poll)
        return
    try:
        sandbox.host_key = pinned or ""
        client = provisioning.pooled_client(sandbox)
    except ssh.RemoteError as exc:
        if exc.transient:
            _enqueue_wait(op, poll)
        else:
            fail(f"SSH to the guest failed: {exc}")
        return
    if not pinned:
        pinned = ssh.host_key_line(client.get_transport().get_remote_server_key())
    if lifecycle.transition(
        sandbox.pk,
        SandboxState.READY,
        expected=[SandboxState.WAITING_FOR_IP],
        host_key=pinned,
        ready_at=timezone.now(),
    ):
        services.finish_operation(
            op.pk,
            OperationStatus.SUCCEEDED,
            message="ready",
            result={"ssh_host": sandbox.ssh_host, "ssh_port": sandbox.ssh_port},
        )
    else:
        sandbox.refresh_from_db(fields=["state"])
        if sandbox.state == SandboxState.READY:
            services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message="ready")
        else:
            services.finish_operation(
                op.pk, OperationStatus.FAILED, error=f"sandbox became {sandbox.state}"
            )


@operation_task("sandboxes.stop_sandbox")
def stop_sandbox(self, op: Operation) -> None:
    sandbox = op.sandbox
    try:
        provisioning.get_ssh_pool().discard(str(sandbox.id))
        provisioning.leave_idle(sandbox)
        services.report_progress(op.pk, 30, "shutting down (ACPI, then force off)")
        provisioning.driver_for(sandbox).shutdown(
            sandbox.name, timeout=vsb("SHUTDOWN_TIMEOUT_SECONDS")
        )
    except Exception as exc:  # noqa: BLE001
        _retry_or_fail(self, op, exc, lambda reason: _fail_keep(op, reason))
        return
    lifecycle.transition(sandbox.pk, SandboxState.STOPPED, expected=[SandboxState.STOPPING])
    services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message="stopped")


@operation_task("sandboxes.destroy_sandbox")
def destroy_sandbox(self, op: Operation) -> None:
    sandbox = op.sandbox
    try:
        services.report_progress(op.pk, 30, "destroying domain and disks")
        provisioning.teardown(sandbox)
    except Exception as exc:  # noqa: BLE001

        def give_up(reason: str) -> None:
            lifecycle.transition(sandbox.pk, SandboxState.ERROR, error=f"destroy failed: {reason}")
            services.finish_operation(op.pk, OperationStatus.FAILED, error=reason)

        _retry_or_fail(self, op, exc, give_up)
        return
    lifecycle.transition(
        sandbox.pk,
        SandboxState.DESTROYED,
        expected=[SandboxState.DESTROYING],
        destroyed_at=timezone.now(),
    )
    services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message="destroyed")


@shared_task(
    name="sandboxes.run_command",
    bind=True,
    acks_late=False,
    ignore_result=True,
    work=queues.Work.COMMANDS,
)
def run_command(self, command_id: str) -> dict:
    """Run one command. Not acks_late: a command must never run twice because a worker died."""
    cmd = services.claim_command(command_id)
    if cmd is None:
        return {}  # taken or finished already (a duplicate delivery, a resend)
    try:
        with beating(lambda: services.beat_command(command_id)):
            fields = _run_command(cmd)
    except Exception as exc:  # noqa: BLE001 - the waiting request must get an answer
        log.exception("command %s failed unexpectedly", command_id)
        fields = _finish_command(
            command_id, status=CommandStatus.FAILED, error=f"internal error: {exc}"
        )
    try:
        wakeups.publish(command_id, fields)
    except Exception:  # noqa: BLE001 - Redis is away: the waiter re-reads the row
        log.warning("could not publish the end of command %s", command_id)
    return fields


def _finish_command(cmd_id, **outcome) -> dict:
    """Record the command's outcome even across a database restart during its run (its
    connection, idle for the whole command, may be gone): the output is not lost, and the
    command is not failed as abandoned. Tried for up to a minute."""
    for attempt in range(60):
        try:
            if connection.connection is not None and not connection.is_usable():
                connection.close()
            return services.finish_command(cmd_id, **outcome)
        except DatabaseError:
            if attempt == 59:
                raise
            log.warning("database unavailable recording command %s; trying again", cmd_id)
            connection.close()
            time.sleep(1)
    raise AssertionError("unreachable")


def _run_command(cmd: Command) -> dict:
    from .remote import ssh

    sandbox = cmd.sandbox
    try:
        # A paused sandbox resumes here (milliseconds), a hibernated one is restored (seconds).
        sandbox = idle.ensure_awake(sandbox)
    except services.Conflict:
        return _finish_command(
            cmd.pk, status=CommandStatus.FAILED, error=f"sandbox is {sandbox.state}"
        )
    except services.Unavailable as exc:  # hibernated, and its host has no room to restore it
        return _finish_command(cmd.pk, status=CommandStatus.FAILED, error=exc.message)
    except DriverError as exc:
        return _finish_command(
            cmd.pk, status=CommandStatus.FAILED, error=f"waking the sandbox failed: {exc}"
        )
    # The command may hold this thread for an hour: not a database connection as well (the
    # commands pool has many threads; PostgreSQL allows 100 connections by default). Inside
    # a transaction (a caller's, the unit tests') it is not ours to close.
    if not connection.in_atomic_block:
        connection.close()
    for attempt in (1, 2):
        try:
            client = provisioning.pooled_client(sandbox)
            result = ssh.run(
                client,
                cmd.command,
                timeout=cmd.timeout_seconds,
                env=cmd.env or None,
                cwd=cmd.cwd or None,
                max_output_bytes=vsb("COMMAND_OUTPUT_LIMIT"),
            )
            break
        except ssh.RemoteError as exc:
            provisioning.get_ssh_pool().discard(str(sandbox.id))
            # Only a failure to connect is retried: the command has not started then.
            if attempt == 1 and isinstance(exc, ssh.ConnectError):
                continue
            return _finish_command(
                cmd.pk, status=CommandStatus.FAILED, error=_cut_off_reason(sandbox, f"SSH: {exc}")
            )
        except Exception as exc:  # noqa: BLE001
            provisioning.get_ssh_pool().discard(str(sandbox.id))
            log.exception("command %s failed", cmd.pk)
            return _finish_command(
                cmd.pk, status=CommandStatus.FAILED, error=f"{type(exc).__name__}: {exc}"
            )
    if result.exit_code is None and not result.timed_out:
        # No exit status: killed by a signal, or its guest went away under it (the channel
        # can close a moment before the transport says it died).
        reason = _cut_off_reason(sandbox, "")
        if reason:
            return _finish_command(cmd.pk, status=CommandStatus.FAILED, result=result, error=reason)
    status = CommandStatus.TIMED_OUT if result.timed_out else CommandStatus.FINISHED
    return _finish_command(cmd.pk, status=status, result=result)


def _cut_off_reason(sandbox, error: str) -> str:
    """Why a command's connection broke: the sandbox was stopped or destroyed under it (the
    lifecycle pool does that while the command runs here), or else `error` itself."""
    sandbox.refresh_from_db(fields=["state"])
    if sandbox.state != SandboxState.READY:
        cause = f" ({error})" if error else ""
        return f"The sandbox became {sandbox.state} while the command ran{cause}."
    return error


# --- Snapshots -----------------------------------------------------------------------------


@operation_task("sandboxes.snapshot_sandbox")
def snapshot_sandbox(self, op: Operation) -> None:
    sandbox, snap = op.sandbox, op.snapshot

    def fail(reason: str) -> None:
        services.snapshot_failed(snap, reason)
        services.finish_operation(op.pk, OperationStatus.FAILED, error=reason, message="failed")

    if snap is None:
        services.finish_operation(op.pk, OperationStatus.FAILED, error="snapshot row is gone")
        return
    try:
        if sandbox.state in idle.IDLE:
            # Snapshots of a running guest take its memory and flush its disks through the
            # agent: a paused or hibernated sandbox is woken first.
            services.report_progress(op.pk, 20, f"waking the {sandbox.state} sandbox")
            sandbox = idle.ensure_awake(sandbox)
        services.report_progress(op.pk, 50, "flushing the guest's disks and taking the snapshot")
        info = provisioning.driver_for(sandbox).snapshot_create(
            sandbox.name, snap.name, snap.description
        )
    except Exception as exc:  # noqa: BLE001
        _retry_or_fail(self, op, exc, fail)
        return
    services.snapshot_taken(snap, has_memory=info.has_memory, domain_state=info.state)
    services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message="snapshot taken")


@operation_task("sandboxes.restore_snapshot")
def restore_snapshot(self, op: Operation) -> None:
    sandbox, snap = op.sandbox, op.snapshot
    if _resumed(op):
        return
    if sandbox.state != SandboxState.RESTORING or snap is None:
        services.finish_operation(
            op.pk, OperationStatus.FAILED, error=f"sandbox is {sandbox.state}, snapshot {snap}"
        )
        return
    driver = provisioning.driver_for(sandbox)
    try:
        provisioning.get_ssh_pool().discard(str(sandbox.id))  # its TCP state is about to vanish
        # A hibernated sandbox's saved memory would outlive the revert: dropped first.
        driver.managed_save_remove(sandbox.name)
        services.report_progress(op.pk, 30, f"reverting to {snap.name}")
        state = driver.snapshot_revert(sandbox.name, snap.name)
        if state == RUNNING:
            # TCG has no kvmclock: the guest wakes with the snapshot's time, and a fresh
            # certificate would look not-yet-valid to it.
            services.report_progress(op.pk, 60, "setting the guest clock")
            driver.set_guest_time(sandbox.name)
    except Exception as exc:  # noqa: BLE001
        _retry_or_fail(self, op, exc, lambda reason: _fail_keep(op, reason))
        return
    if state == RUNNING:
        lifecycle.transition(
            sandbox.pk, SandboxState.WAITING_FOR_IP, expected=[SandboxState.RESTORING]
        )
        services.report_progress(op.pk, 80, "waiting for SSH")
        _enqueue_wait(op, countdown=0)
        return
    lifecycle.transition(sandbox.pk, SandboxState.STOPPED, expected=[SandboxState.RESTORING])
    services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message=f"restored {snap.name}")


@operation_task("sandboxes.delete_snapshot")
def delete_snapshot(self, op: Operation) -> None:
    sandbox, snap = op.sandbox, op.snapshot
    if snap is None:
        services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message="already deleted")
        return
    try:
        provisioning.driver_for(sandbox).snapshot_delete(sandbox.name, snap.name)
    except Exception as exc:  # noqa: BLE001

        def fail(reason: str) -> None:
            services.snapshot_failed(snap, reason)
            services.finish_operation(op.pk, OperationStatus.FAILED, error=reason)

        _retry_or_fail(self, op, exc, fail)
        return
    name = snap.name
    services.snapshot_deleted(snap)
    services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message=f"deleted {name}")


# --- Periodic sweeps (control queue) -------------------------------------------------------


@shared_task(name="sandboxes.reap_expired_sandboxes", ignore_result=True)
def reap_expired_sandboxes() -> int:
    count = 0
    for sandbox in services.expired_sandboxes():
        try:
            services.destroy_sandbox(sandbox, None)
            count += 1
        except services.Conflict:
            continue
    return count


@shared_task(name="sandboxes.fail_stuck_operations", ignore_result=True)
def fail_stuck_operations() -> int:
    return services.fail_stuck_operations()


@shared_task(name="sandboxes.resend_lost_work", ignore_result=True)
def resend_lost_work() -> dict[str, int]:
    return services.resend_lost_work()


@shared_task(name="sandboxes.check_host_heartbeats", ignore_result=True)
def check_host_heartbeats() -> list[str]:
    from .models import Host

    silent = [h.name for h in Host.objects.filter(enabled=True) if not h.is_alive()]
    if silent:
        log.warning("hosts without a live worker: %s", ", ".join(silent))
    return silent


@shared_task(name="sandboxes.reconcile_hosts", ignore_result=True)
def reconcile_hosts() -> list[str]:
    """The beat's entry (control): one reconcile per host with a live worker."""
    return _on_each_live_host(reconcile_host)


@shared_task(name="sandboxes.reconcile_host", ignore_result=True)
def reconcile_host(host_id: int, report_key: str = "") -> dict | None:
    """One reconcile pass over this worker's host (sandboxes/reconcile.py). Not acks_late:
    a pass lost with its worker is simply the next beat's. With `report_key`, the pass's
    report is published as a wake-up under that key (tests wait on it)."""
    from . import reconcile

    host = _own_host(host_id, "reconcile")
    if host is None:
        return None
    try:
        report = reconcile.reconcile_host(host).as_dict()
    except DriverError as exc:
        log.warning("reconcile of host %s skipped: %s", host.name, exc)
        report = {"host": host.name, "error": str(exc)}
    if report_key:
        wakeups.publish(report_key, report, kind="reconcile")
    return report


@shared_task(name="sandboxes.sweep_idle_hosts", ignore_result=True)
def sweep_idle_hosts() -> list[str]:
    """The beat's entry (control): one idle sweep per host with a live worker."""
    return _on_each_live_host(sweep_idle_host)


def _on_each_live_host(task) -> list[str]:
    """Send `task(host_id)` to each host with a live worker, on that host's own queue (a
    per-host pass needs the host's libvirt); the names of the hosts sent to."""
    hosts = services.live_hosts()
    for host in hosts:
        services.enqueue(task, host, host.pk)
    return [h.name for h in hosts]


@shared_task(name="sandboxes.sweep_idle_host", ignore_result=True)
def sweep_idle_host(host_id: int, report_key: str = "") -> dict | None:
    """One idle sweep (sandboxes/idle.py) over this worker's host. Not acks_late: a pass
    lost with its worker is the next beat's. With `report_key`, the report is published as a
    wake-up under that key (tests wait on it)."""
    host = _own_host(host_id, "idle sweep")
    if host is None:
        return None
    report = idle.sweep_host(host).as_dict()
    if report_key:
        wakeups.publish(report_key, report, kind="idle")
    return report


def _own_host(host_id: int, what: str):
    """The Host row of a per-host pass, if it is this worker's host (else None, logged)."""
    from .models import Host

    host = Host.objects.filter(pk=host_id).first()
    if host is not None and host.name != vsb("HOST_NAME"):
        log.error("%s of host %s sent to the worker of %s: ignored", what, host, vsb("HOST_NAME"))
        return None
    return host


@shared_task(
    name="sandboxes.set_power", acks_late=False, ignore_result=True, work=queues.Work.COMMANDS
)
def set_power(request_id: str, sandbox_id: str, action: str) -> None:
    """An explicit pause or resume (POST /pause, /resume): the request waits for its answer."""
    idle.run_power(request_id, sandbox_id, action)


# The task carrying each kind of operation: a restarted worker re-enqueues what it left open
# (worker.recover). Apps above sandboxes add their kinds with register_operation_task.
TASK_FOR_KIND = {
    OperationKind.CREATE: provision_sandbox,
    OperationKind.START: start_sandbox,
    OperationKind.STOP: stop_sandbox,
    OperationKind.DESTROY: destroy_sandbox,
    OperationKind.SNAPSHOT: snapshot_sandbox,
    OperationKind.RESTORE: restore_snapshot,
    OperationKind.DELETE_SNAPSHOT: delete_snapshot,
}


def register_operation_task(kind: str, task) -> None:
    TASK_FOR_KIND[kind] = task


def work_for_kind(kind: str) -> queues.Work:
    """The kind of work (hence the queue and pool) an operation of `kind` runs as."""
    task = TASK_FOR_KIND.get(kind)
    return queues.work_of(task) if task is not None else queues.Work.LIFECYCLE
