"""A worker pool killed with SIGKILL: the lifecycle pool in the middle of a create (after a
restart the sandbox either completes or ends in `error` with a reason, and no orphan domain
or disk remains); the commands pool in the middle of a command (its restart fails that
command with a reason and answers its request); and neither restart touches the other
pool's work (core/queues.py, sandboxes/worker.py)."""

from __future__ import annotations

import signal
import subprocess
import threading
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


def command_in_background(api, sandbox_id: str, command: str) -> tuple[threading.Thread, list]:
    """Send `command` through the HTTP API from a thread (the request waits for it): the
    thread and the list its answer lands in."""
    answer: list = []

    def send() -> None:
        answer.append(
            api.post(
                f"/v1/sandboxes/{sandbox_id}/command",
                {"command": command, "timeout_seconds": 900},
                timeout=900,
            )
        )

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, answer


def wait_for_file(api, sandbox_id: str, path: str, timeout: float = 60) -> None:
    """Until the guest has `path` (the command started), asked through the terminals pool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.get(f"/v1/sandboxes/{sandbox_id}/files/stat?path={path}")[0] == 200:
            return
        time.sleep(0.3)
    raise AssertionError(f"{path} never appeared: the command did not start")


def test_a_commands_pool_restart_fails_the_command_it_ran_and_leaves_lifecycle_work_alone(
    e2e_stack, sandbox
):
    api = e2e_stack.alice
    lifecycle = e2e_stack.worker
    thread, answer = command_in_background(
        api, sandbox["id"], "touch /tmp/held-by-commands && sleep 600"
    )
    wait_for_file(api, sandbox["id"], "/tmp/held-by-commands")

    logged_before = len(lifecycle.log_since_start())
    e2e_stack.workers["commands"].kill(signal.SIGKILL)
    killed = time.monotonic()
    e2e_stack.restart_worker("commands")
    thread.join(timeout=60)
    print(f"\nthe command's request answered {time.monotonic() - killed:.1f} s after the kill")
    assert answer, "the waiting request was never answered"
    status, body = answer[0]
    assert status == 200, body
    assert body["command"]["status"] == "failed"
    assert "worker restarted" in body["command"]["error"], body["command"]["error"]

    assert e2e_stack.worker is lifecycle and lifecycle.popen.poll() is None
    logged_since = lifecycle.log_since_start()[logged_before:]
    assert "resumed" not in logged_since, "the lifecycle pool resumed nothing"
    assert api.run(sandbox["id"], "echo alive")["stdout"] == "alive\n"


def test_a_lifecycle_pool_restart_leaves_a_running_command_alone(e2e_stack, sandbox):
    api = e2e_stack.alice
    thread, answer = command_in_background(
        api, sandbox["id"], "touch /tmp/held-by-lifecycle && sleep 8 && echo survived"
    )
    wait_for_file(api, sandbox["id"], "/tmp/held-by-lifecycle")

    e2e_stack.worker.kill(signal.SIGKILL)
    e2e_stack.restart_worker("lifecycle")
    thread.join(timeout=60)
    assert answer, "the waiting request was never answered"
    status, body = answer[0]
    assert status == 200, body
    assert body["command"]["status"] == "finished", body["command"]
    assert body["command"]["stdout"] == "survived\n"
