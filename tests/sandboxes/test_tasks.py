"""Tasks run in this process against the fake driver: each reloads by id, checks the work is
still wanted, and records the outcome. (The integration and e2e rings run a real worker.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from core import wakeups
from core.queues import Work
from sandboxes import provisioning, services, tasks, worker
from sandboxes.choices import CommandStatus, OperationStatus, SandboxState
from sandboxes.drivers.base import SHUTOFF, PermanentDriverError, TransientDriverError
from sandboxes.models import Command, Operation, Sandbox
from sandboxes.remote import ssh
from sandboxes.remote.errors import SessionLost
from sandboxes.remote.ssh import CommandResult

pytestmark = pytest.mark.django_db


@pytest.fixture
def waits(monkeypatch):
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(
        tasks, "_enqueue_wait", lambda op, countdown: calls.append((str(op.pk), countdown))
    )
    return calls


@pytest.fixture
def create_op(host, source, django_user_model, sent_tasks):
    owner = django_user_model.objects.create_user("tess")

    def make(**kw) -> Operation:
        return services.create_sandbox(owner, source_vm_name="debian-base", **kw)

    return make


def assert_failed_leaving_no_domain(op: Operation, driver, error: str = "") -> None:
    """The operation failed (with `error` in its message) and left no domain behind."""
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED and error in op.error
    assert driver.list_domains() == []


def test_it_creates_a_stopped_sandbox_when_not_auto_started(driver, create_op):
    op = create_op(auto_start=False)
    tasks.provision_sandbox.run(str(op.pk))
    op.refresh_from_db()
    sandbox = op.sandbox
    sandbox.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED and op.progress == 100
    assert sandbox.state == SandboxState.STOPPED
    domain = driver.get_domain(sandbox.name)
    assert domain.state == SHUTOFF
    assert domain.tags == {
        "sandbox": str(sandbox.pk),
        "host": sandbox.host.name,
        "deployment": settings.DATABASES["default"]["NAME"],
    }


def test_it_boots_and_hands_over_to_the_readiness_poll(driver, create_op, waits):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    op.sandbox.refresh_from_db()
    assert op.sandbox.state == SandboxState.BOOTING
    assert driver.state(op.sandbox.name) == "running"
    assert waits == [(str(op.pk), 1.0)]
    spec = driver.domains[op.sandbox.name].spec
    assert f"vsb.principals={op.sandbox.principal}" in spec.cmdline
    assert "vsb.ca=ssh-ed25519:" in spec.cmdline
    assert spec.network.host_port == op.sandbox.ssh_port


def test_it_is_harmless_to_run_the_create_twice(driver, create_op, waits):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.RUNNING)
    tasks.provision_sandbox.run(str(op.pk))
    assert len(driver.list_domains()) == 1
    op.refresh_from_db()
    assert op.attempt == 2


def test_it_fails_a_create_on_a_permanent_error_and_leaves_nothing(driver, create_op):
    op = create_op()
    driver.fail_next(
        "start", PermanentDriverError("Cannot access storage file /x: Permission denied")
    )
    tasks.provision_sandbox.run(str(op.pk))
    assert_failed_leaving_no_domain(op, driver, "Permission denied")
    op.sandbox.refresh_from_db()
    assert op.sandbox.state == SandboxState.ERROR and "Permission denied" in op.sandbox.error


def test_it_retries_a_transient_error_with_the_operation_still_running(driver, create_op):
    op = create_op()
    driver.fail_next("clone", TransientDriverError("cannot acquire state change lock"))
    with pytest.raises(TransientDriverError):
        tasks.provision_sandbox.run(str(op.pk))  # called directly, retry() re-raises
    op.refresh_from_db()
    assert op.status == OperationStatus.RUNNING
    assert "retrying after" in op.message


def test_it_gives_up_after_the_last_attempt(driver, create_op, settings):
    op = create_op()
    Operation.objects.filter(pk=op.pk).update(attempt=settings.VSB["TASK_MAX_ATTEMPTS"])
    tasks.provision_sandbox.run(str(op.pk))
    assert_failed_leaving_no_domain(op, driver, "gave up")


def test_it_cleans_up_a_clone_whose_sandbox_was_destroyed_meanwhile(driver, create_op, monkeypatch):
    op = create_op()
    real_clone = driver.clone

    def clone_then_destroy_request(spec):
        info = real_clone(spec)
        Sandbox.objects.filter(pk=op.sandbox_id).update(state=SandboxState.DESTROYING)
        return info

    monkeypatch.setattr(driver, "clone", clone_then_destroy_request)
    tasks.provision_sandbox.run(str(op.pk))
    assert_failed_leaving_no_domain(op, driver)


def test_it_polls_again_until_the_guest_prints_its_host_key(driver, create_op, waits):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    waits.clear()
    tasks.wait_ready.run(str(op.pk))
    op.sandbox.refresh_from_db()
    assert op.sandbox.state == SandboxState.WAITING_FOR_IP
    assert len(waits) == 1


def test_a_restart_waits_for_this_boots_host_key_line_before_probing_ssh(
    driver, create_op, waits, monkeypatch, settings, tmp_path
):
    """Probes sent before sshd listens pile up as half-open connections that all reach it
    at once; the console line comes right before sshd starts, on every boot."""
    from sandboxes.remote import ssh

    settings.VSB = {**settings.VSB, "SANDBOX_DIR": str(tmp_path)}
    probes = []
    monkeypatch.setattr(ssh, "probe_ssh_banner", lambda *a, **kw: probes.append(a) or False)
    op = create_op(auto_start=False)
    tasks.provision_sandbox.run(str(op.pk))
    services.set_sandbox_fields(op.sandbox.pk, host_key="ssh-ed25519 AAAApinned")
    start = services.start_sandbox(op.sandbox, op.requested_by)
    tasks.start_sandbox.run(str(start.pk))
    waits.clear()

    tasks.wait_ready.run(str(start.pk))  # the console log of this boot is still empty
    assert probes == [] and len(waits) == 1

    console = provisioning.console_log_path(op.sandbox)
    console.parent.mkdir(parents=True, exist_ok=True)
    console.write_text("vsb-hostkey: ssh-ed25519 AAAApinned\n")
    tasks.wait_ready.run(str(start.pk))
    assert len(probes) == 1 and len(waits) == 2


def test_it_fails_the_boot_when_the_guest_stops(driver, create_op, waits):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    driver.set_state(op.sandbox.name, SHUTOFF)
    tasks.wait_ready.run(str(op.pk))
    assert_failed_leaving_no_domain(op, driver, "stopped while booting")
    op.sandbox.refresh_from_db()
    assert op.sandbox.state == SandboxState.ERROR


def test_it_fails_the_boot_after_the_ready_deadline(driver, create_op, waits, settings):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    Operation.objects.filter(pk=op.pk).update(
        started_at=timezone.now() - timedelta(seconds=settings.VSB["READY_TIMEOUT_SECONDS"] + 1)
    )
    tasks.wait_ready.run(str(op.pk))
    assert_failed_leaving_no_domain(op, driver, "did not answer SSH")


def test_it_reads_the_pinned_host_key_from_the_console_log(driver, create_op, tmp_path):
    op = create_op()
    sandbox = op.sandbox
    Sandbox.objects.filter(pk=sandbox.pk).update(workdir=str(tmp_path))
    sandbox.refresh_from_db()
    (tmp_path / "console.log").write_text(
        "[    1.0] booting\r\nvsb-hostkey: ssh-ed25519 AAAAfirst\r\n"
        "root# echo fake; vsb-hostkey: ssh-ed25519 AAAAinline\n"
        "vsb-hostkey: ssh-ed25519 AAAAforged\n"
    )
    # The first-boot line wins; later lines may come from root inside the sandbox.
    assert provisioning.console_host_key(sandbox) == "ssh-ed25519 AAAAfirst"


def test_it_stops_and_destroys(driver, create_op, waits, sent_tasks):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    sandbox = Sandbox.objects.get(pk=op.sandbox_id)
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.READY)
    sandbox.refresh_from_db()
    stop = services.stop_sandbox(sandbox, sandbox.owner)
    tasks.stop_sandbox.run(str(stop.pk))
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STOPPED
    assert driver.state(sandbox.name) == SHUTOFF
    destroy = services.destroy_sandbox(sandbox, sandbox.owner)
    tasks.destroy_sandbox.run(str(destroy.pk))
    sandbox.refresh_from_db()
    destroy.refresh_from_db()
    assert sandbox.state == SandboxState.DESTROYED and destroy.status == OperationStatus.SUCCEEDED
    assert driver.get_domain(sandbox.name) is None


def test_it_destroys_expired_sandboxes(driver, create_op, sent_tasks):
    op = create_op(ttl_seconds=60)
    Sandbox.objects.filter(pk=op.sandbox_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert tasks.reap_expired_sandboxes.run() == 1
    sandbox = Sandbox.objects.get(pk=op.sandbox_id)
    assert sandbox.state == SandboxState.DESTROYING
    assert sandbox.operations.filter(kind="destroy").exists()


def test_it_errors_operations_stuck_past_their_deadline(driver, create_op):
    op = create_op()
    Operation.objects.filter(pk=op.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    Sandbox.objects.filter(pk=op.sandbox_id).update(state=SandboxState.BOOTING)
    assert tasks.fail_stuck_operations.run() == 1
    op.refresh_from_db()
    sandbox = Sandbox.objects.get(pk=op.sandbox_id)
    assert op.status == OperationStatus.ERRORED and "deadline" in op.error
    assert sandbox.state == SandboxState.ERROR and "worker" in sandbox.error


@pytest.fixture
def interrupted(driver, create_op, sent_tasks):
    """A create and a command that were running when their workers died: (op, command)."""
    op = create_op()
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.RUNNING, attempt=1)
    cmd = Command.objects.create(sandbox=op.sandbox, command="sleep 100", timeout_seconds=200)
    sent_tasks.clear()
    return op, cmd


def test_a_restarted_worker_resumes_operations_and_fails_interrupted_commands(
    interrupted, sent_tasks, django_capture_on_commit_callbacks
):
    op, cmd = interrupted
    with django_capture_on_commit_callbacks(execute=True):
        assert worker.recover(op.host) == 1
    assert sent_tasks == [
        ("sandboxes.provision_sandbox", [str(op.pk)], f"kvm.{settings.VSB['HOST_NAME']}")
    ]
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.FAILED and "restarted" in cmd.error


def test_a_restarted_lifecycle_pool_resumes_its_operations_and_leaves_commands_running(
    interrupted, sent_tasks, django_capture_on_commit_callbacks
):
    op, cmd = interrupted
    with django_capture_on_commit_callbacks(execute=True):
        assert worker.recover(op.host, {Work.LIFECYCLE}) == 1
    assert [name for name, _, _ in sent_tasks] == ["sandboxes.provision_sandbox"]
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.RUNNING, "the commands pool still runs it"


def test_a_restarted_commands_pool_fails_its_commands_and_leaves_lifecycle_operations_alone(
    interrupted, sent_tasks, django_capture_on_commit_callbacks
):
    op, cmd = interrupted
    with django_capture_on_commit_callbacks(execute=True):
        assert worker.recover(op.host, {Work.COMMANDS}) == 0
    assert sent_tasks == [], "the lifecycle pool still runs the create: not sent twice"
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.FAILED and "restarted" in cmd.error


def test_a_restarted_worker_answers_the_requests_waiting_on_interrupted_commands_at_once(
    driver, create_op, django_capture_on_commit_callbacks
):
    op = create_op()
    cmd = Command.objects.create(sandbox=op.sandbox, command="sleep 100", timeout_seconds=200)
    with django_capture_on_commit_callbacks(execute=True):
        worker.recover(op.host)
    # What the request blocked in services.run_command is waiting for: without it, it would
    # sleep until the command's timeout and then read the failure from the row.
    fields = wakeups.wait(cmd.pk, 2)
    assert fields is not None and fields["status"] == CommandStatus.FAILED
    assert "restarted" in fields["error"]
    # The task of a command still queued then finds it finished and does not run it.
    assert tasks.run_command.run(str(cmd.pk)) == {}


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(SessionLost("ssh connection dropped", started=True), id="connection-lost"),
        pytest.param(CommandResult(None, b"", b"", False, False, False, 1500), id="no-exit-status"),
    ],
)
def test_a_command_cut_off_by_a_destroy_fails_saying_so(driver, create_op, monkeypatch, outcome):
    """The lifecycle pool destroys the sandbox while the commands pool runs a command in it:
    the command fails with that reason, not as finished or as a bare SSH error."""
    sandbox = create_op().sandbox
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.READY)
    cmd = Command.objects.create(sandbox=sandbox, command="sleep 600", timeout_seconds=900)

    def destroyed_meanwhile(*args, **kwargs):
        Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.DESTROYING)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(provisioning, "pooled_client", lambda sandbox: object())
    monkeypatch.setattr(ssh, "run", destroyed_meanwhile)
    fields = tasks.run_command.run(str(cmd.pk))
    assert fields["status"] == CommandStatus.FAILED
    assert fields["error"].startswith("The sandbox became destroying while the command ran")


def test_it_refuses_to_enqueue_on_a_queue_that_is_not_a_hosts(host):
    host.name = "typo host"
    with pytest.raises(ValueError, match="unknown queue 'kvm.typo host'"):
        services.enqueue(tasks.destroy_sandbox, host, "x")


def test_it_finds_a_bridged_guest_by_its_address_sources_in_order(
    driver, create_op, waits, settings
):
    settings.VSB = {**settings.VSB, "NETWORK_MODE": "network"}
    op = create_op()
    sandbox = op.sandbox
    assert sandbox.ssh_port is None and sandbox.network_mode == "network"
    tasks.provision_sandbox.run(str(op.pk))
    driver.set_addresses(sandbox.name, "lease", ["192.0.2.10"])
    driver.set_addresses(sandbox.name, "agent", ["192.0.2.20"])
    sandbox.refresh_from_db()
    assert provisioning.discover_address(sandbox) == "192.0.2.20"  # agent comes first
    spec = driver.domains[sandbox.name].spec
    assert spec.network.name == "default" and spec.network.kind == "network"


def test_a_resumed_create_of_a_sandbox_that_is_already_ready_just_succeeds(
    driver, create_op, waits
):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    Sandbox.objects.filter(pk=op.sandbox_id).update(state=SandboxState.READY)
    Operation.objects.filter(pk=op.pk).update(status=OperationStatus.RUNNING)
    tasks.provision_sandbox.run(str(op.pk))  # the worker died after READY, before the op closed
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED
    assert driver.state(op.sandbox.name) == "running", "a ready sandbox must never be torn down"


def test_a_duplicate_readiness_poll_does_not_fail_a_finished_boot(driver, create_op, waits):
    op = create_op()
    tasks.provision_sandbox.run(str(op.pk))
    Sandbox.objects.filter(pk=op.sandbox_id).update(state=SandboxState.READY)
    tasks.wait_ready.run(str(op.pk))
    op.refresh_from_db()
    assert op.status == OperationStatus.SUCCEEDED
