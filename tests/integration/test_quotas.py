"""Quotas hold under concurrency, against PostgreSQL: many requests of one agent at once
(threads, each with its own database connection) never take more than its quota, and the
concurrent-commands quota holds while a real worker runs the commands in a guest (a loopback
sshd playing the sandbox)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts import services as accounts
from accounts.models import ApiKey
from sandboxes import services
from sandboxes.choices import CommandStatus, SandboxState
from sandboxes.models import Command, Sandbox
from tests.integration.conftest import host_worker
from tests.support.sshd import start_sshd

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SANDBOX_ID = uuid.uuid4()  # the guest sshd trusts this sandbox's principal


def limit(agent, **limits) -> None:
    key = ApiKey.objects.get(user=agent.user)
    accounts.update_api_key(key, name=key.name, limits=limits)


def client_of(agent) -> APIClient:
    """A client of its own for a thread, with the agent's key."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {agent.secret}")
    return client


def in_threads(count: int, request) -> list:
    """`request(i)` in `count` threads released at the same moment; their results. Each
    thread has its own database connection, closed when it ends."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = request(i)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.mark.parametrize(
    "limits, memory_mb, allowed",
    [({"max_sandboxes": 3}, 256, 3), ({"max_memory_mb": 1024}, 512, 2)],
    ids=["max_sandboxes", "max_memory_mb"],
)
def test_many_creates_at_once_from_one_agent_never_overshoot_its_quota(
    alice, host, source, sent_tasks, settings, limits, memory_mb, allowed
):
    # Bridged networking: no SSH port is allocated, whose unique index would otherwise
    # serialise the creates by itself and hide a race.
    settings.VSB = {**settings.VSB, "NETWORK_MODE": "network"}
    # Room and boot slots for all: only the quota may refuse, and no create waits queued.
    host.capacity, host.boot_slots = 20, 20
    host.save(update_fields=["capacity", "boot_slots"])
    limit(alice, **limits)
    clients = [client_of(alice) for _ in range(8)]
    body = {"source_vm_name": "debian-base", "memory_mb": memory_mb}
    responses = in_threads(8, lambda i: clients[i].post("/v1/sandboxes", body, format="json"))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * allowed + [409] * (8 - allowed), [r.content for r in responses]
    codes = {r.json()["error"]["code"] for r in responses if r.status_code == 409}
    assert codes == {"quota_exceeded"}
    assert Sandbox.objects.filter(owner=alice.user).count() == allowed
    assert len(sent_tasks) == allowed  # a refused create queued nothing


@pytest.fixture
def ready_row(alice, host, source):
    return Sandbox.objects.create(
        name="sbx-race01", owner=alice.user, host=host, source=source, state=SandboxState.READY
    )


def test_many_snapshots_at_once_never_overshoot_the_per_sandbox_quota(alice, ready_row, sent_tasks):
    limit(alice, max_snapshots_per_sandbox=2)
    clients = [client_of(alice) for _ in range(6)]
    url = f"/v1/sandboxes/{ready_row.pk}/snapshots"
    responses = in_threads(6, lambda i: clients[i].post(url, {"name": f"s{i}"}, format="json"))
    assert sorted(r.status_code for r in responses) == [202] * 2 + [409] * 4
    assert ready_row.snapshots.count() == 2


def test_many_commands_at_once_never_overshoot_the_concurrency_quota(
    alice, ready_row, sent_tasks, monkeypatch
):
    # No worker here: the rows stay running, as if the commands were still at work; the
    # requests that got through are answered at once.
    monkeypatch.setattr(services.wakeups, "wait", lambda *args: {"status": "finished"})
    limit(alice, max_concurrent_commands=2)
    clients = [client_of(alice) for _ in range(10)]
    url = f"/v1/sandboxes/{ready_row.pk}/command"
    responses = in_threads(10, lambda i: clients[i].post(url, {"command": "true"}, format="json"))
    assert sorted(r.status_code for r in responses) == [200] * 2 + [429] * 8
    assert Command.objects.filter(sandbox=ready_row).count() == 2


# --- concurrent commands through a real worker ---------------------------------------------


@pytest.fixture(scope="module")
def guest_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """A worker (fake hypervisor driver) whose SSH CA a loopback sshd trusts for the
    sandbox's principal: commands really run, over SSH, in that sshd."""
    sshd = start_sshd(tmp_path_factory.mktemp("quota-guest"), f"sandbox-{SANDBOX_ID.hex}")
    try:
        with host_worker(django_db_blocker, VSB_SSH_CA_KEY=sshd.ca.key_path):
            yield sshd
    finally:
        sshd.stop()


def wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_an_agent_past_its_concurrent_commands_gets_429_until_one_finishes(
    guest_worker, alice, host, source
):
    limit(alice, max_concurrent_commands=2)
    guest_worker.ready_sandbox(SANDBOX_ID, "sbx-quota01", alice.user, host, source)
    url = f"/v1/sandboxes/{SANDBOX_ID}/command"
    clients = [client_of(alice) for _ in range(2)]
    slow: list = []
    threads = [
        threading.Thread(
            target=lambda c=c: (
                slow.append(c.post(url, {"command": "sleep 3; echo done"}, format="json")),
                connection.close(),
            )
        )
        for c in clients
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: Command.objects.filter(status=CommandStatus.RUNNING).count() == 2)
        refused = alice.post(url, {"command": "echo three"}, format="json")
        assert refused.status_code == 429, refused.content
        error = refused.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert error["message"].startswith("concurrent commands: 2 of 2 running")
    finally:
        for thread in threads:
            thread.join(timeout=30)
    assert [(r.status_code, r.json()["command"]["stdout"]) for r in slow] == [(200, "done\n")] * 2
    after = alice.post(url, {"command": "echo four"}, format="json")
    assert after.status_code == 200, after.content
    assert after.json()["command"]["stdout"] == "four\n"
    assert not Command.objects.filter(command="echo three").exists()
