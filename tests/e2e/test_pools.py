"""Long commands never starve lifecycle work (core/queues.py, docs/architecture.md "Queues
and pools"): with every thread of the host's commands pool held by a `sleep 600`, another
sandbox is created, snapshotted and destroyed in about the time it takes on an idle host, a
file operation still answers, and destroying the busy sandbox ends its commands at once,
each with a reason."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from sandboxes.choices import CommandStatus
from sandboxes.models import Command

HELD = 8
# The commands pool exactly as large as the commands held, so it is full, as the host's one
# pool of 8 threads was when 8 long commands held up every destroy and the TTL reaper.
# A shared 2-core machine under load boots a TCG guest slowly: the bounds below are relative
# to a create measured in the same run, the readiness deadline is generous.
STACK_ENV = {"VSB_WORKER_COMMANDS_THREADS": str(HELD), "VSB_READY_TIMEOUT_SECONDS": "300"}

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


def hold_commands(api, sandbox_id: str) -> tuple[list[threading.Thread], list]:
    """HELD `sleep 600` commands sent at once through the HTTP API, each from its own thread
    (a request waits for its command): the threads and the list their answers land in."""
    answers: list = [None] * HELD

    def send(i: int) -> None:
        answers[i] = api.post(
            f"/v1/sandboxes/{sandbox_id}/command",
            {"command": f"touch /tmp/held-{i} && sleep 600", "timeout_seconds": 900},
            timeout=900,
        )

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(HELD)]
    for thread in threads:
        thread.start()
    return threads, answers


def wait_until_all_run(api, sandbox_id: str, timeout: float = 60) -> None:
    """Until the guest shows all HELD commands started (each touched its file): every
    commands thread is taken. Asked through the file API, i.e. the terminals pool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api.get(f"/v1/sandboxes/{sandbox_id}/files/list?path=/tmp")
        assert status == 200, body
        started = {e["name"] for e in body["entries"] if e["name"].startswith("held-")}
        if len(started) == HELD:
            return
        time.sleep(0.5)
    raise AssertionError(f"only {sorted(started)} of {HELD} commands started")


def host_processes_naming(name: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", name], capture_output=True, text=True).stdout
    return found.splitlines()


def test_a_full_commands_pool_holds_up_no_other_sandboxs_create_snapshot_or_destroy(e2e_stack):
    api = e2e_stack.alice
    # The baseline, on this machine and at this moment: with nothing else running.
    busy, create_idle = timed(api.create_sandbox, agent_id="busy")
    _, snapshot_idle = timed(api.snapshot, busy["id"], "idle")

    threads, answers = hold_commands(api, busy["id"])
    destroy_sent = None
    try:
        wait_until_all_run(api, busy["id"])
        other, create_busy = timed(api.create_sandbox, agent_id="other")
        _, snapshot_busy = timed(api.snapshot, other["id"], "under-load")
        _, destroy_busy = timed(api.destroy_sandbox, other["id"])
        status, body = api.get(f"/v1/sandboxes/{busy['id']}/files/stat?path=/etc")
        still_held = sum(thread.is_alive() for thread in threads)
        print(
            f"\nidle: create {create_idle:.1f} s, snapshot {snapshot_idle:.1f} s; "
            f"with {HELD} commands held: create {create_busy:.1f} s, "
            f"snapshot {snapshot_busy:.1f} s, destroy {destroy_busy:.1f} s"
        )
        assert status == 200 and body["type"] == "directory", body
        assert still_held == HELD, "the commands were still running all along"
        # Under the single pool each of these waited for a command to end (600 s).
        assert create_busy < 2 * create_idle + 60
        assert snapshot_busy < 2 * snapshot_idle + 20
        assert destroy_busy < 30
    finally:
        destroy_sent = time.monotonic()
        api.destroy_sandbox(busy["id"])

    # Destroying the sandbox ends its commands at once, each with a reason.
    for thread in threads:
        thread.join(timeout=max(0.0, destroy_sent + 30 - time.monotonic()))
    answered_in = time.monotonic() - destroy_sent
    print(f"the {HELD} commands answered {answered_in:.1f} s after the destroy was asked")
    assert not any(thread.is_alive() for thread in threads)
    for status, body in answers:
        assert status == 200, body
        command = body["command"]
        assert command["status"] == "failed", command
        assert "while the command ran" in command["error"], command["error"]
    with e2e_stack.blocker.unblock():
        rows = list(Command.objects.filter(sandbox_id=busy["id"]))
    assert len(rows) == HELD
    assert all(r.status == CommandStatus.FAILED and r.finished_at for r in rows)
    assert host_processes_naming(busy["name"]) == [], "QEMU or a relay of it outlived it"
