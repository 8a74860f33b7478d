"""Idle sandboxes with a real VM and the real worker pools: the host's idle sweep (sent
through the broker, as the beat does) pauses a sandbox unused for VSB_IDLE_PAUSE_SECONDS and
hibernates one unused for VSB_IDLE_HIBERNATE_SECONDS; a command on either just works and
brings it back to ready; POST /pause and /resume; a hibernated sandbox destroyed leaves no
save image and no disk. One boot of alice's sandbox serves the module, in order."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from audit.models import AuditEvent
from sandboxes import services, tasks
from tests.e2e.conftest import run_host_pass

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

PAUSE_AFTER, HIBERNATE_AFTER = 2, 5
STACK_ENV = {
    "VSB_IDLE_PAUSE_SECONDS": str(PAUSE_AFTER),
    "VSB_IDLE_HIBERNATE_SECONDS": str(HIBERNATE_AFTER),
    # One boot serves the module; on a machine shared with other VM runs a TCG boot has
    # taken over 120 s (load 12 on 2 cores).
    "VSB_READY_TIMEOUT_SECONDS": "240",
}
URI = "qemu:///system"


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True
    ).stdout.strip()


def save_image(name: str) -> str:
    return f"/var/lib/libvirt/qemu/save/{name}.save"


def sweep(e2e_stack, capture, timeout: float = 90) -> dict:
    """One idle sweep on this host's worker (what the beat's entry sends); its report."""
    report = run_host_pass(e2e_stack, capture, tasks.sweep_idle_host, "idle", timeout)
    assert report["errors"] == [], report
    return report


def state(api, sandbox_id: str) -> str:
    return api.get(f"/v1/sandboxes/{sandbox_id}")[1]["sandbox"]["state"]


def test_an_unused_sandbox_is_paused_and_a_command_resumes_it(
    e2e_stack, sandbox, django_capture_on_commit_callbacks
):
    api, name = e2e_stack.alice, sandbox["name"]
    api.run(sandbox["id"], "true")  # an SSH connection in the commands pool's pool
    time.sleep(PAUSE_AFTER + 0.5)

    report = sweep(e2e_stack, django_capture_on_commit_callbacks)

    assert report["paused"] == [name]
    assert virsh("domstate", name) == "paused"
    assert state(api, sandbox["id"]) == "paused"

    started = time.monotonic()
    cmd = api.run(sandbox["id"], "echo awake")
    elapsed = time.monotonic() - started
    assert cmd["stdout"] == "awake\n" and cmd["exit_code"] == 0
    assert state(api, sandbox["id"]) == "ready"
    assert virsh("domstate", name) == "running"
    print(f"first command after a pause: {elapsed * 1000:.0f} ms")


def test_a_sandbox_unused_for_longer_is_hibernated_and_a_command_restores_it(
    e2e_stack, sandbox, django_capture_on_commit_callbacks
):
    api, name = e2e_stack.alice, sandbox["name"]
    # Kept in memory only (tmpfs): a restore keeps it, a boot would not.
    api.run(sandbox["id"], "echo before > /dev/shm/marker")
    time.sleep(HIBERNATE_AFTER + 0.5)

    report = sweep(e2e_stack, django_capture_on_commit_callbacks)

    assert report["hibernated"] == [name]
    assert virsh("domstate", name) == "shut off"
    assert os.path.exists(save_image(name)), "its memory is in libvirt's managed save image"
    assert state(api, sandbox["id"]) == "hibernated"

    cmd = api.run(sandbox["id"], "cat /dev/shm/marker; date +%s")
    assert cmd["exit_code"] == 0, cmd
    marker, guest_now = cmd["stdout"].split("\n")[:2]
    assert marker == "before", "restored with its memory, not booted afresh"
    assert abs(int(guest_now) - time.time()) < 30, "its clock was set after the restore"
    assert state(api, sandbox["id"]) == "ready"
    assert not os.path.exists(save_image(name))


def test_explicit_pause_and_resume(e2e_stack, sandbox):
    api, name = e2e_stack.alice, sandbox["name"]
    status, body = api.post(f"/v1/sandboxes/{sandbox['id']}/pause")
    assert status == 200, body
    assert body["sandbox"]["state"] == "paused" and virsh("domstate", name) == "paused"

    status, body = api.post(f"/v1/sandboxes/{sandbox['id']}/resume")
    assert status == 200, body
    assert body["sandbox"]["state"] == "ready" and virsh("domstate", name) == "running"
    with e2e_stack.blocker.unblock():
        verbs = list(
            AuditEvent.objects.filter(
                sandbox_id=sandbox["id"], verb__in=["sandbox.pause", "sandbox.resume"]
            ).values_list("verb", flat=True)
        )
    assert sorted(verbs) == ["sandbox.pause", "sandbox.resume"]

    status, body = e2e_stack.bob.post(f"/v1/sandboxes/{sandbox['id']}/pause")
    assert status == 404, "another agent's sandbox"


def test_a_hibernated_sandbox_destroyed_leaves_no_save_image_and_no_disk(
    e2e_stack, sandbox, django_capture_on_commit_callbacks
):
    api, name = e2e_stack.alice, sandbox["name"]
    time.sleep(HIBERNATE_AFTER + 0.5)
    assert sweep(e2e_stack, django_capture_on_commit_callbacks)["hibernated"] == [name]
    assert os.path.exists(save_image(name))
    with e2e_stack.blocker.unblock():
        workdir = services.Sandbox.objects.get(pk=sandbox["id"]).workdir
    assert os.path.isdir(workdir)

    api.destroy_sandbox(sandbox["id"])

    assert not os.path.exists(save_image(name))
    assert not os.path.exists(workdir)
    assert virsh("domstate", name) == ""
