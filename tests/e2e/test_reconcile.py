"""The reconcile with real VMs and the real worker: each drift is made by hand with virsh (or
the driver, for a stray), a reconcile is sent to the worker through the broker, and the row
or the domain heals. One boot of alice's sandbox serves the first two tests, in order."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from audit.models import AuditEvent
from core import queues
from sandboxes import tasks
from sandboxes.drivers.base import CloneSpec, PortForward
from sandboxes.drivers.libvirt_driver import LibvirtDriver
from sandboxes.runtime import deployment_name
from tests.e2e.conftest import image_dir, run_host_pass

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

URI = "qemu:///system"


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True)


def domain_state(name: str) -> str | None:
    result = virsh("domstate", name)
    return result.stdout.strip() if result.returncode == 0 else None


def beat_reconcile(capture) -> None:
    """What the beat does every VSB_RECONCILE_INTERVAL_SECONDS: the control task, which
    sends one reconcile to each live host's queue."""
    with capture(execute=True):
        queues.enqueue(tasks.reconcile_hosts)


def host_reconcile(e2e_stack, capture, timeout: float = 60) -> dict:
    """One pass on this host's worker; its report."""
    report = run_host_pass(e2e_stack, capture, tasks.reconcile_host, "reconcile", timeout)
    assert "error" not in report, report
    return report


def wait_for_domain_state(name: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while domain_state(name) != state:
        assert time.monotonic() < deadline, f"{name} is {domain_state(name)}, not {state}"
        time.sleep(0.3)


def wait_for_state(api, sandbox_id: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sandbox = api.get(f"/v1/sandboxes/{sandbox_id}")[1]["sandbox"]
        if sandbox["state"] == state:
            return sandbox
        time.sleep(0.3)
    raise AssertionError(f"sandbox {sandbox_id} is {sandbox['state']}, not {state}")


def test_a_sandbox_running_before_a_host_reboot_shows_stopped_and_starts_again(
    e2e_stack, sandbox, django_capture_on_commit_callbacks
):
    api, name = e2e_stack.alice, sandbox["name"]
    # The guest's own writeback first, which a guest up for half a minute has done by
    # itself: killed seconds after its first boot, it loses its new host key (the disk runs
    # with cache=unsafe), makes another, and the pinned key refuses it (measured; see
    # docs/architecture.md, "Reconcile").
    api.run(sandbox["id"], "sync")
    assert virsh("destroy", name).returncode == 0  # the host went down under the guest
    wait_for_domain_state(name, "shut off")

    beat_reconcile(django_capture_on_commit_callbacks)

    stopped = wait_for_state(api, sandbox["id"], "stopped")
    assert stopped["error"] == ""
    with e2e_stack.blocker.unblock():
        event = AuditEvent.objects.get(verb="sandbox.reconciled", sandbox_id=sandbox["id"])
    assert event.data["to"] == "stopped" and "shut off" in event.data["reason"]

    status, body = api.post(f"/v1/sandboxes/{sandbox['id']}/start", {"wait": True})
    assert status == 200, body
    assert body["sandbox"]["state"] == "ready"
    assert api.run(sandbox["id"], "echo back")["stdout"] == "back\n"


def test_a_stopped_sandbox_whose_domain_someone_started_becomes_ready(
    e2e_stack, sandbox, django_capture_on_commit_callbacks
):
    api, name = e2e_stack.alice, sandbox["name"]
    status, body = api.post(f"/v1/sandboxes/{sandbox['id']}/stop", {"wait": True})
    assert status == 200 and body["sandbox"]["state"] == "stopped", body
    assert virsh("start", name).returncode == 0  # an operator, behind the service's back

    beat_reconcile(django_capture_on_commit_callbacks)

    # Through the usual readiness check: SSH answers with the pinned host key.
    wait_for_state(api, sandbox["id"], "ready", timeout=150)
    assert api.run(sandbox["id"], "echo adopted")["stdout"] == "adopted\n"
    status, ops = api.get(f"/v1/operations?sandbox={sandbox['id']}&kind=start")
    assert status == 200, ops
    assert ops["results"][0]["status"] == "succeeded"  # the newest: the system's
    with e2e_stack.blocker.unblock():
        from sandboxes.models import Operation

        op = Operation.objects.get(pk=ops["results"][0]["id"])
    assert op.requested_by is None and "found running" in op.input["reason"]


def test_a_sandbox_whose_domain_vanished_becomes_error(
    e2e_stack, sandbox, django_capture_on_commit_callbacks
):
    api, name = e2e_stack.alice, sandbox["name"]
    assert api.get(f"/v1/sandboxes/{sandbox['id']}")[1]["sandbox"]["state"] == "ready"
    virsh("destroy", name)
    assert virsh("undefine", name, "--snapshots-metadata").returncode == 0

    beat_reconcile(django_capture_on_commit_callbacks)

    failed = wait_for_state(api, sandbox["id"], "error")
    assert failed["error"] == "domain vanished"
    status, body = api.post(f"/v1/sandboxes/{sandbox['id']}/command", {"command": "true"})
    assert status == 409, body
    # It can still be destroyed: its files go, the missing domain is no obstacle.
    api.destroy_sandbox(sandbox["id"])
    assert not Path(settings.VSB["SANDBOX_DIR"], name).exists()


@pytest.fixture
def strays():
    """Domains defined behind the service's back (no row; left shut off, which spares the
    CPU: a running one is destroyed the same way): ours for this host and deployment, and
    one of another host on the same libvirtd. Whatever survives is destroyed after."""
    driver = LibvirtDriver(URI, domain_type="qemu", workdir_root=settings.VSB["SANDBOX_DIR"])
    image = image_dir()
    low, high = settings.VSB["PORT_RANGE"]
    made = {}

    def make(name: str, host_name: str, port: int) -> str:
        workdir = f"{settings.VSB['SANDBOX_DIR']}/{name}"
        driver.clone(
            CloneSpec(
                name=name,
                source_disk=str(image / "base.qcow2"),
                workdir=workdir,
                kernel=str(image / "vmlinuz"),
                initrd=str(image / "initrd.img"),
                cmdline="console=ttyS0",
                network=PortForward(host_port=port),
                tags={
                    "sandbox": str(uuid.uuid4()),
                    "host": host_name,
                    "deployment": deployment_name(),
                },
            )
        )
        made[name] = workdir
        return workdir

    suffix = uuid.uuid4().hex[:6]
    ours = f"sbx-stray{suffix}"
    foreign = f"sbx-other{suffix}"
    make(ours, settings.VSB["HOST_NAME"], high - 2)
    make(foreign, f"{settings.VSB['HOST_NAME']}-elsewhere", high - 3)
    try:
        yield driver, ours, foreign, made[ours]
    finally:
        for name, workdir in made.items():
            driver.destroy(name, workdir)
        driver.close()


def test_a_stray_domain_of_this_host_is_destroyed_after_the_grace_period_with_its_disk(
    e2e_stack, strays, django_capture_on_commit_callbacks
):
    driver, ours, foreign, workdir = strays
    assert Path(workdir, "disk.qcow2").exists()

    first = host_reconcile(e2e_stack, django_capture_on_commit_callbacks)
    assert first["strays_waiting"] == [ours]  # seen, inside its grace period
    assert domain_state(ours) == "shut off"

    time.sleep(settings.VSB["RECONCILE_STRAY_GRACE_SECONDS"] + 0.5)
    second = host_reconcile(e2e_stack, django_capture_on_commit_callbacks)

    assert second["strays_destroyed"] == [ours]
    assert domain_state(ours) is None
    assert not Path(workdir).exists()
    with e2e_stack.blocker.unblock():
        event = AuditEvent.objects.get(verb="domain.stray_destroyed", target_id=ours)
    assert event.data["workdir"] == workdir and event.data["domain"]["state"] == "shutoff"
    # Another host's domain on the same libvirtd: never ours to judge.
    assert domain_state(foreign) == "shut off"
    assert foreign not in second["strays_waiting"] + second["strays_destroyed"]
