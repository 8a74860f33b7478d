"""The per-host reconcile against the fake driver: each drift by hand, then a pass, then the
healed row or the stray gone; domains of other hosts and deployments, and rows an operation
is moving, are never touched. (tests/e2e/test_reconcile.py does the same with real VMs and a
real worker.)"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from sandboxes import provisioning, reconcile, services, tasks
from sandboxes.choices import OperationKind, OperationStatus, SandboxState
from sandboxes.drivers.base import PAUSED, RUNNING, SHUTOFF, TransientDriverError
from sandboxes.models import TRANSITIONAL_STATES, Host, Operation, Sandbox
from sandboxes.runtime import deployment_name

pytestmark = pytest.mark.django_db

GRACE = 30


@pytest.fixture(autouse=True)
def sandbox_dir(settings, tmp_path):
    path = tmp_path / "sandboxes"
    path.mkdir()
    settings.VSB = {
        **settings.VSB,
        "SANDBOX_DIR": str(path),
        "RECONCILE_STRAY_GRACE_SECONDS": GRACE,
    }
    return path


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("rhea")


@pytest.fixture
def make_sandbox(host, source, owner, driver, sandbox_dir):
    """A sandbox row in `state` and, unless `domain` is None, its domain in that state."""

    def make(state: str, domain: str | None = RUNNING) -> Sandbox:
        sid = uuid.uuid4()
        sandbox = Sandbox.objects.create(
            id=sid,
            name=f"sbx-{sid.hex[:8]}",
            owner=owner,
            host=host,
            source=source,
            agent_id="rhea",
            state=state,
            workdir=str(sandbox_dir / f"sbx-{sid.hex[:8]}"),
        )
        if domain is not None:
            driver.add_domain(
                sandbox.name,
                state=domain,
                disks=(f"{sandbox.workdir}/disk.qcow2",),
                tags=provisioning.domain_tags(sandbox),
            )
        return sandbox

    return make


def run_pass(host: Host, after: float = 0.0) -> reconcile.Report:
    return reconcile.reconcile_host(host, now=time.time() + after)


def state_of(sandbox: Sandbox) -> str:
    sandbox.refresh_from_db()
    return sandbox.state


def stray_tags(host_name: str, **over) -> dict[str, str]:
    return {
        "sandbox": str(uuid.uuid4()),
        "host": host_name,
        "deployment": deployment_name(),
        **over,
    }


# ---- rows whose domain drifted ------------------------------------------------------------


@pytest.mark.parametrize("state", [SandboxState.READY, SandboxState.STOPPED])
def test_it_marks_a_settled_sandbox_whose_domain_vanished_as_error(
    host, driver, make_sandbox, state
):
    sandbox = make_sandbox(state)
    driver.destroy(sandbox.name)  # virsh undefine behind our back

    report = run_pass(host)

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.ERROR and sandbox.error == "domain vanished"
    assert report.vanished == [sandbox.name]
    event = AuditEvent.objects.get(verb="sandbox.reconciled", sandbox_id=sandbox.pk)
    assert event.actor == "system"
    assert event.data["from"] == state and event.data["to"] == "error"
    assert event.data["reason"] == "domain vanished"


def test_it_takes_a_domain_of_another_sandbox_under_the_same_name_for_a_vanished_one(
    host, driver, make_sandbox
):
    sandbox = make_sandbox(SandboxState.READY, domain=None)
    driver.add_domain(sandbox.name, state=RUNNING, tags=stray_tags(host.name))
    run_pass(host)
    assert state_of(sandbox) == SandboxState.ERROR


def test_it_shows_a_ready_sandbox_whose_domain_is_shut_off_as_stopped_and_it_starts_again(
    host, driver, make_sandbox, sent_tasks
):
    sandbox = make_sandbox(SandboxState.READY)
    driver.set_state(sandbox.name, SHUTOFF)  # the host rebooted

    report = run_pass(host)

    assert state_of(sandbox) == SandboxState.STOPPED
    assert report.stopped == [sandbox.name]
    event = AuditEvent.objects.get(verb="sandbox.reconciled", sandbox_id=sandbox.pk)
    assert event.data["to"] == "stopped" and "shut off" in event.data["reason"]
    assert event.data["domain"]["state"] == SHUTOFF

    op = services.start_sandbox(sandbox, sandbox.owner)
    tasks.start_sandbox.run(str(op.pk))
    assert state_of(sandbox) == SandboxState.BOOTING
    assert driver.state(sandbox.name) == RUNNING


def test_a_start_after_a_reboot_names_the_forwarded_port_another_process_took(
    host, driver, make_sandbox, sent_tasks
):
    sandbox = make_sandbox(SandboxState.STOPPED, domain=SHUTOFF)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        Sandbox.objects.filter(pk=sandbox.pk).update(ssh_port=port, ssh_host="127.0.0.1")
        op = services.start_sandbox(sandbox, sandbox.owner)
        tasks.start_sandbox.run(str(op.pk))
    op.refresh_from_db()
    assert op.status == OperationStatus.FAILED
    assert f"port {port} on 127.0.0.1" in op.error and "held by another process" in op.error
    assert driver.state(sandbox.name) == SHUTOFF
    assert state_of(sandbox) == SandboxState.ERROR  # the disk is kept: destroy or start again


def test_it_takes_a_stopped_sandbox_whose_domain_runs_through_the_readiness_check(
    host, driver, make_sandbox, sent_tasks, django_capture_on_commit_callbacks
):
    sandbox = make_sandbox(SandboxState.STOPPED, domain=RUNNING)  # someone ran virsh start

    with django_capture_on_commit_callbacks(execute=True):
        report = run_pass(host)

    assert state_of(sandbox) == SandboxState.BOOTING
    assert report.adopted == [sandbox.name]
    op = Operation.objects.get(sandbox=sandbox)
    assert op.kind == OperationKind.START and op.requested_by is None
    assert "found running" in op.input["reason"]
    assert sent_tasks == [("sandboxes.start_sandbox", [str(op.pk)], host.queue_name)]


def test_it_leaves_settled_sandboxes_whose_domain_agrees_alone(host, driver, make_sandbox):
    ready = make_sandbox(SandboxState.READY, domain=RUNNING)
    stopped = make_sandbox(SandboxState.STOPPED, domain=SHUTOFF)
    paused = make_sandbox(SandboxState.PAUSED, domain=PAUSED)  # the idle sweep's pause

    assert not run_pass(host)

    assert [state_of(s) for s in (ready, stopped, paused)] == ["ready", "stopped", "paused"]
    assert not AuditEvent.objects.filter(verb="sandbox.reconciled").exists()


@pytest.mark.parametrize("state", TRANSITIONAL_STATES)
def test_it_leaves_a_sandbox_mid_transition_alone(host, driver, make_sandbox, state):
    sandbox = make_sandbox(state, domain=None)
    run_pass(host)
    assert state_of(sandbox) == state


def test_it_leaves_a_settled_sandbox_with_an_open_operation_alone(host, driver, make_sandbox):
    vanished = make_sandbox(SandboxState.READY, domain=None)
    shut_off = make_sandbox(SandboxState.READY, domain=SHUTOFF)
    paused = make_sandbox(SandboxState.READY, domain=PAUSED)  # a snapshot being taken
    for sandbox in (vanished, shut_off, paused):
        Operation.objects.create(
            kind=OperationKind.SNAPSHOT,
            sandbox=sandbox,
            host=host,
            queue=host.queue_name,
            status=OperationStatus.RUNNING,
        )
    assert not run_pass(host)
    assert state_of(vanished) == state_of(shut_off) == state_of(paused) == SandboxState.READY


def test_it_does_not_correct_a_sandbox_that_moved_since_the_pass_read_it(
    host, driver, make_sandbox
):
    sandbox = make_sandbox(SandboxState.READY, domain=SHUTOFF)
    seen = Sandbox.objects.get(pk=sandbox.pk)
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.STOPPING)  # a stop won
    assert not services.reconcile_sandbox(seen, SandboxState.STOPPED, "test", domain={})
    assert state_of(sandbox) == SandboxState.STOPPING


def test_it_leaves_sandboxes_of_other_hosts_alone(host, source, owner, driver):
    other = Host.objects.create(name="elsewhere", last_heartbeat=timezone.now())
    sandbox = Sandbox.objects.create(
        name="sbx-elsewhere", owner=owner, host=other, source=source, state=SandboxState.READY
    )
    run_pass(host)
    assert state_of(sandbox) == SandboxState.READY


# ---- strays -------------------------------------------------------------------------------


def test_it_destroys_a_stray_after_the_grace_period_with_its_disk(host, driver, sandbox_dir):
    workdir = sandbox_dir / "sbx-stray001"
    workdir.mkdir()
    tags = stray_tags(host.name)
    info = driver.add_domain(
        "sbx-stray001", state=RUNNING, disks=(f"{workdir}/disk.qcow2",), tags=tags
    )

    first = run_pass(host)
    assert first.strays_waiting == ["sbx-stray001"]
    assert driver.get_domain("sbx-stray001") is not None
    assert run_pass(host, after=GRACE - 5).strays_waiting == ["sbx-stray001"]

    report = run_pass(host, after=GRACE + 1)

    assert report.strays_destroyed == ["sbx-stray001"]
    assert driver.get_domain("sbx-stray001") is None
    assert ("destroy", ("sbx-stray001", str(workdir))) in driver.calls
    event = AuditEvent.objects.get(verb="domain.stray_destroyed")
    assert event.target_id == "sbx-stray001" and str(event.sandbox_id) == tags["sandbox"]
    assert event.data["domain"]["uuid"] == info.uuid
    assert event.data["workdir"] == str(workdir)
    assert event.data["host"] == host.name


def test_it_destroys_the_domain_a_destroyed_sandbox_left_behind(host, driver, make_sandbox):
    sandbox = make_sandbox(SandboxState.DESTROYED, domain=SHUTOFF)
    run_pass(host)
    assert run_pass(host, after=GRACE + 1).strays_destroyed == [sandbox.name]
    assert driver.get_domain(sandbox.name) is None


def test_it_starts_the_grace_over_when_a_stray_gets_a_live_row(host, driver, make_sandbox):
    sandbox = make_sandbox(SandboxState.DESTROYED, domain=SHUTOFF)
    run_pass(host)
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.STOPPED)  # not a stray now
    run_pass(host, after=GRACE + 1)
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.DESTROYED)
    assert run_pass(host, after=GRACE + 2).strays_waiting == [sandbox.name]
    assert driver.get_domain(sandbox.name) is not None


@pytest.mark.parametrize("state", [SandboxState.ERROR, SandboxState.BOOTING])
def test_it_keeps_the_domain_of_any_live_row(host, driver, make_sandbox, state):
    sandbox = make_sandbox(state, domain=RUNNING)
    run_pass(host)
    assert not run_pass(host, after=GRACE + 1)
    assert driver.get_domain(sandbox.name) is not None


def test_it_never_touches_a_domain_of_another_host_or_deployment_or_without_our_metadata(
    host, driver
):
    foreign = {
        "other-host": stray_tags("elsewhere"),
        "other-deployment": stray_tags(host.name, deployment="another-install"),
        "no-host-tag": {"sandbox": str(uuid.uuid4()), "deployment": deployment_name()},
        "no-sandbox-tag": {"host": host.name, "deployment": deployment_name()},
        "untagged": {},
    }
    for name, tags in foreign.items():
        driver.add_domain(name, state=RUNNING, tags=tags)

    for after in (0, GRACE + 1, 10 * GRACE):
        assert not run_pass(host, after=after)

    assert sorted(d.name for d in driver.list_domains()) == sorted(foreign)
    assert not [c for c in driver.calls if c[0] == "destroy"]


def test_it_keeps_a_stray_redefined_under_the_same_name_for_a_new_grace(host, driver):
    tags = stray_tags(host.name)
    driver.add_domain("sbx-again001", tags=tags)
    run_pass(host)
    driver.destroy("sbx-again001")
    driver.add_domain("sbx-again001", tags=tags)  # a new libvirt UUID
    assert run_pass(host, after=GRACE + 1).strays_waiting == ["sbx-again001"]


def test_a_failing_libvirt_leaves_everything_as_it_was(host, driver, make_sandbox):
    sandbox = make_sandbox(SandboxState.READY, domain=None)
    driver.fail_next("list_domains", TransientDriverError("libvirtd restarting"))
    with pytest.raises(TransientDriverError):
        run_pass(host)
    assert state_of(sandbox) == SandboxState.READY


# ---- where a stray's files may be removed -------------------------------------------------


def test_a_strays_workdir_is_a_real_directory_directly_in_the_sandbox_dir(sandbox_dir, tmp_path):
    inside = sandbox_dir / "sbx-1"
    inside.mkdir()
    (sandbox_dir / "a" / "b").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, sandbox_dir / "sbx-link")
    root = str(sandbox_dir)

    assert reconcile.stray_workdir((f"{inside}/disk.qcow2",), root) == str(inside)
    assert reconcile.stray_workdir((f"{sandbox_dir}/sbx-link/disk.qcow2",), root) is None
    assert reconcile.stray_workdir((f"{elsewhere}/disk.qcow2",), root) is None
    assert reconcile.stray_workdir((f"{sandbox_dir}/a/b/disk.qcow2",), root) is None
    assert reconcile.stray_workdir((f"{inside}/other.qcow2",), root) is None
    assert reconcile.stray_workdir((f"{sandbox_dir}/sbx-gone/disk.qcow2",), root) is None
    assert reconcile.stray_workdir((f"{inside}/../sbx-1/disk.qcow2",), root) == str(inside)
    assert reconcile.stray_workdir(("relative/disk.qcow2",), root) is None


def test_a_strays_workdir_is_found_through_a_symlinked_sandbox_dir(sandbox_dir, tmp_path):
    (sandbox_dir / "sbx-2").mkdir()
    link = tmp_path / "sandboxes-link"
    os.symlink(sandbox_dir, link)
    found = reconcile.stray_workdir((f"{link}/sbx-2/disk.qcow2",), str(link))
    assert found == f"{link}/sbx-2"


# ---- the tasks ----------------------------------------------------------------------------


def test_the_beat_sends_one_reconcile_to_each_live_hosts_own_queue(
    host, sent_tasks, django_capture_on_commit_callbacks
):
    other = Host.objects.create(name="kvm-b", last_heartbeat=timezone.now())
    Host.objects.create(name="silent", last_heartbeat=timezone.now() - timedelta(minutes=5))

    with django_capture_on_commit_callbacks(execute=True):
        assert sorted(tasks.reconcile_hosts.run()) == sorted([host.name, "kvm-b"])

    assert sorted(sent_tasks) == sorted(
        [
            ("sandboxes.reconcile_host", [host.pk], host.queue_name),
            ("sandboxes.reconcile_host", [other.pk], "kvm.kvm-b"),
        ]
    )


def test_the_host_task_reports_its_pass(host, driver, make_sandbox):
    from core import wakeups

    sandbox = make_sandbox(SandboxState.READY, domain=None)
    key = f"test-{uuid.uuid4().hex}"
    tasks.reconcile_host.run(host.pk, key)
    assert wakeups.wait(key, 5, kind="reconcile")["vanished"] == [sandbox.name]


def test_the_host_task_ignores_a_pass_for_another_host(host, driver):
    other = Host.objects.create(name="kvm-b", last_heartbeat=timezone.now())
    assert tasks.reconcile_host.run(other.pk) is None


def test_the_host_task_survives_libvirt_being_down(host, driver):
    driver.fail_next("list_domains", TransientDriverError("libvirtd restarting"))
    assert "libvirtd restarting" in tasks.reconcile_host.run(host.pk)["error"]
