"""A worker killed with SIGKILL in the middle of a create: after a restart the sandbox
either completes or ends in `error` with a reason, and no orphan domain or disk remains."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.models import TRANSITIONAL_STATES, Sandbox

# django_db: makes pytest-django create the test database; data the module shares is
# written outside the per-test transaction (see conftest.e2e_stack).
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def domain_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "dominfo", name], capture_output=True
        ).returncode
        == 0
    )


def test_it_recovers_a_create_interrupted_by_sigkill(e2e_stack):
    api = e2e_stack.alice
    status, body = api.post("/v1/sandboxes", {"source_vm_name": "debian-base", "agent_id": "crash"})
    assert status == 202, body
    sandbox_id, op_id = body["sandbox"]["id"], body["operation"]["id"]
    name = body["sandbox"]["name"]

    # Kill the worker once the VM is defined and booting, i.e. mid-create.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = api.get(f"/v1/sandboxes/{sandbox_id}")[1]["sandbox"]["state"]
        if state in ("booting", "waiting_for_ip"):
            break
        time.sleep(0.05)
    assert state in ("booting", "waiting_for_ip"), state
    e2e_stack.worker.kill(signal.SIGKILL)
    killed_in = state
    assert domain_exists(name)

    e2e_stack.restart_worker()
    op = api.wait_operation(op_id, timeout=240)
    sandbox = api.get(f"/v1/sandboxes/{sandbox_id}")[1]["sandbox"]
    print(
        f"\nkilled in {killed_in}; after restart: operation {op['status']}, sandbox {sandbox['state']}"
    )
    if op["status"] == "succeeded":
        assert sandbox["state"] == "ready"
        assert api.run(sandbox_id, "echo alive")["stdout"] == "alive\n"
    else:
        assert sandbox["state"] == "error" and sandbox["error"], sandbox
        assert not domain_exists(name)

    api.destroy_sandbox(sandbox_id)
    assert not domain_exists(name)
    assert not Path(settings.VSB["SANDBOX_DIR"], name).exists()
    with e2e_stack.blocker.unblock():
        assert not Sandbox.objects.filter(pk=sandbox_id, state__in=TRANSITIONAL_STATES).exists()


@pytest.fixture(scope="module")
def broken_source(e2e_stack):
    """A source whose kernel file is missing (committed outside the test's transaction, so
    the server sees it)."""
    from sandboxes.models import SourceVM

    with e2e_stack.blocker.unblock():
        good = SourceVM.objects.get(name="debian-base")
        SourceVM.objects.update_or_create(
            name="broken-kernel",
            defaults={
                "kind": good.kind,
                "disk_path": good.disk_path,
                "kernel": "/nonexistent/vmlinuz",
                "initrd": good.initrd,
                "cmdline": good.cmdline,
            },
        )
    return "broken-kernel"


def test_it_fails_a_create_that_cannot_boot_and_leaves_nothing(e2e_stack, broken_source):
    """The create ends in error saying why, and the domain and overlay are gone."""
    api = e2e_stack.alice
    status, body = api.post("/v1/sandboxes", {"source_vm_name": "broken-kernel"})
    assert status == 202, body
    op = api.wait_operation(body["operation"]["id"], timeout=240)
    assert op["status"] == "failed"
    sandbox = api.get(f"/v1/sandboxes/{body['sandbox']['id']}")[1]["sandbox"]
    assert sandbox["state"] == "error"
    assert "/nonexistent/vmlinuz" in sandbox["error"], sandbox["error"]
    assert not domain_exists(sandbox["name"])
    assert not Path(settings.VSB["SANDBOX_DIR"], sandbox["name"]).exists()
