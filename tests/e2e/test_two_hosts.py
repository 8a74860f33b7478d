"""Two KVM hosts on one machine: the e2e stack's host and a second one (conftest
`second_host`: its own name, queues, port range and sandbox directory, on the same libvirtd,
database, Redis and web server). Placement across both, a fork on its origin's host, and a
host whose worker dies: its sandboxes are reported unavailable, calls for them are refused
at once naming the host, creates go to the other host, and when its worker is back its rows
match libvirt again and its sandboxes work. Two sandboxes (one per host) serve the module,
in order; a fork and a create made during the outage come and go (three VMs at most)."""

from __future__ import annotations

import subprocess
import time

import pytest
from django.conf import settings

from audit.models import AuditEvent
from sandboxes import services
from sandboxes.models import Sandbox, SourceVM
from tests.e2e.conftest import api_user
from tests.e2e.conftest import test_domains as domains_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

# Boots under TCG on a shared 2-core machine at load 10-12 took 80-130 s to SSH (measured
# while other suites ran), and the readiness poll's banner probes (one every ~0.8 s, each
# given up after 0.5 s) piled up in the guest as half-open connections (24 in CLOSE-WAIT,
# sshd "Exceeded MaxStartups") until no probe got an answer: three creates in a row failed.
# Slower probes and a longer wait let a slow guest through; the fix belongs to the readiness
# poll (sandboxes.tasks.wait_ready), not to this module.
STACK_ENV = {"VSB_READY_TIMEOUT_SECONDS": "240", "VSB_READY_POLL_SECONDS": "3"}


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)


def rule_picks(e2e_stack) -> str:
    """The host the placement rule (`services.choose_host`) picks for debian-base now."""
    with e2e_stack.blocker.unblock():
        return services.choose_host(SourceVM.objects.get(name="debian-base")).name


def wait_for_sandbox(api, sandbox_id: str, check, timeout: float) -> dict:
    """The sandbox as the API answers it, once `check(sandbox)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = api.get(f"/v1/sandboxes/{sandbox_id}")
        assert status == 200, body
        if check(body["sandbox"]):
            return body["sandbox"]
        assert time.monotonic() < deadline, f"still {body['sandbox']} after {timeout} s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def placed(e2e_stack, second_host):
    """Two ready sandboxes of alice's, created one after the other, each with the host the
    placement rule picked right before its create: [(picked, sandbox)]. Destroyed after the
    module (the second host's workers started again first if a test left them dead)."""
    api, made = e2e_stack.alice, []
    try:
        for _ in range(2):
            picked = rule_picks(e2e_stack)
            made.append((picked, api.create_sandbox()))
        yield made
    finally:
        second_host.ensure_workers()
        for _, sandbox in made:
            api.destroy_sandbox(sandbox["id"])


def on_host(placed, host: str) -> dict:
    return next(sandbox for _, sandbox in placed if sandbox["host"] == host)


def test_each_create_goes_to_the_host_the_rule_picks_and_both_hosts_get_one(
    e2e_stack, second_host, placed
):
    first = settings.VSB["HOST_NAME"]
    own = {
        first: (settings.VSB["PORT_RANGE"], settings.VSB["SANDBOX_DIR"]),
        second_host.name: (second_host.resources.port_range, second_host.resources.sandbox_dir),
    }
    for picked, sandbox in placed:
        assert sandbox["host"] == picked
        assert sandbox["available"] is True and sandbox["unavailable_reason"] == ""
    assert {sandbox["host"] for _, sandbox in placed} == {first, second_host.name}

    for _, sandbox in placed:
        # Each lives in its own host's port range and sandbox directory, and answers.
        (low, high), sandbox_dir = own[sandbox["host"]]
        assert low <= sandbox["ssh_port"] <= high
        with e2e_stack.blocker.unblock():
            assert Sandbox.objects.get(pk=sandbox["id"]).workdir.startswith(sandbox_dir + "/")
        assert sandbox["name"] in domains_in(sandbox_dir)
        assert e2e_stack.alice.run(sandbox["id"], "echo up")["stdout"] == "up\n"


def test_a_fork_stays_on_its_origins_host_where_the_rule_would_not_place_it(e2e_stack, placed):
    api = e2e_stack.alice
    picked = rule_picks(e2e_stack)
    origin = next(sandbox for _, sandbox in placed if sandbox["host"] != picked)
    api.snapshot(origin["id"], "fork-point")

    with api.ready_sandbox(from_sandbox=origin["id"], from_snapshot="fork-point") as fork:
        assert fork["host"] == origin["host"] != picked
        assert api.run(fork["id"], "echo forked")["stdout"] == "forked\n"


@pytest.fixture(scope="module")
def operator(e2e_stack):
    """An operator who sees the fleet and drains hosts (module scope: the row is committed
    for the web server to see)."""
    return api_user(e2e_stack, "e2e-hugo", ["view_host", "drain_host"])


def test_a_drained_host_takes_no_new_sandbox_and_its_own_keep_working(
    e2e_stack, second_host, placed, operator
):
    api = e2e_stack.alice
    status, fleet = operator.get("/v1/hosts")
    assert status == 200, fleet
    hosts = {h["name"]: h for h in fleet["hosts"]}
    for name in (settings.VSB["HOST_NAME"], second_host.name):
        # Both hosts' workers measured their machine (the same one here) and its guests.
        seen = hosts[name]
        assert seen["alive"] and seen["accepting"] and not seen["draining"], seen
        assert seen["resources"]["memory_total_mb"] > 0 and seen["committed_memory_mb"] >= 256
        assert seen["sandboxes"].get("ready", 0) >= 1
    assert api.get("/v1/hosts")[0] == 404  # agents do not see the fleet

    drained = rule_picks(e2e_stack)
    other = next(
        h for h in hosts if h in (settings.VSB["HOST_NAME"], second_host.name) and h != drained
    )
    status, body = operator.post(f"/v1/hosts/{drained}/drain", {})
    assert status == 200 and body["draining"] is True, body
    try:
        assert rule_picks(e2e_stack) == other
        # A new sandbox goes to the other host (created without booting: placement is the
        # point), and the drained host's own sandbox keeps working.
        status, created = api.post(
            "/v1/sandboxes", {"source_vm_name": "debian-base", "auto_start": False}
        )
        assert status == 202, created
        assert created["sandbox"]["host"] == other
        assert api.wait_operation(created["operation"]["id"])["status"] == "succeeded"
        api.destroy_sandbox(created["sandbox"]["id"])
        staying = on_host(placed, drained)
        assert api.run(staying["id"], "echo still-here")["stdout"] == "still-here\n"
        status, fleet = operator.get(f"/v1/hosts/{drained}")
        assert status == 200 and fleet["draining"] and not fleet["accepting"]
    finally:
        status, body = operator.post(f"/v1/hosts/{drained}/undrain", {})
    assert status == 200 and body["draining"] is False, body
    with e2e_stack.blocker.unblock():
        verbs = list(
            AuditEvent.objects.filter(verb__startswith="host.").values_list("verb", flat=True)
        )
    assert {"host.drain", "host.undrain"} <= set(verbs)


def test_a_host_whose_worker_dies_is_reported_unavailable_and_reconciled_when_it_is_back(
    e2e_stack, second_host, placed
):
    api, dead = e2e_stack.alice, second_host.name
    lost, kept = on_host(placed, dead), next(s for _, s in placed if s["host"] != dead)
    # Its disk holds its first-boot host key before the hard stop below (test_reconcile.py).
    api.run(lost["id"], "sync")

    # The second machine goes down: its workers die, and its guests with them (libvirt
    # still holds the shut-off domain, as after a power loss).
    second_host.kill_workers()
    killed = time.monotonic()
    assert virsh("destroy", lost["name"]).returncode == 0

    silent = wait_for_sandbox(
        api, lost["id"], lambda s: not s["available"], settings.VSB["HOST_DEAD_SECONDS"] + 20
    )
    detected = time.monotonic() - killed
    # The row keeps the state the host last reported; the reason names the host.
    assert silent["state"] == "ready"
    assert silent["unavailable_reason"].startswith(f"host {dead} has no live worker")
    status, page = api.get("/v1/sandboxes")
    listed = {s["id"]: s for s in page["results"]}
    assert listed[lost["id"]]["available"] is False and listed[kept["id"]]["available"] is True

    # New creates go to the live host (its boot runs while the checks below do).
    assert rule_picks(e2e_stack) == kept["host"]
    status, created = api.post("/v1/sandboxes", {"source_vm_name": "debian-base"})
    assert status == 202, created
    assert created["sandbox"]["host"] == kept["host"]

    # Calls that need the dead host's worker are refused at once, naming the host.
    slowest = 0.0
    for method, path, body in [
        ("POST", f"/v1/sandboxes/{lost['id']}/command", {"command": "true"}),
        ("GET", f"/v1/sandboxes/{lost['id']}/files/stat?path=/", None),
        ("POST", f"/v1/sandboxes/{lost['id']}/stop", {}),
        ("POST", f"/v1/sandboxes/{lost['id']}/snapshots", {"name": "while-down"}),
    ]:
        asked = time.monotonic()
        status, answer = api.request(method, path, body, timeout=30)
        assert status == 503, (path, answer)
        assert answer["error"]["code"] == "host_unavailable", answer
        assert f"host {dead} has no live worker" in answer["error"]["message"]
        slowest = max(slowest, time.monotonic() - asked)
        assert slowest < 3, f"{path} took {slowest:.1f} s"
    assert api.run(kept["id"], "echo unaffected")["stdout"] == "unaffected\n"
    assert api.wait_operation(created["operation"]["id"])["status"] == "succeeded"
    api.destroy_sandbox(created["sandbox"]["id"])

    # The worker comes back: its start has the host reconciled at once (no beat runs in
    # the test stack), so the row says what libvirt says: the guest is shut off.
    second_host.start_workers()
    back = time.monotonic()
    reconciled = wait_for_sandbox(api, lost["id"], lambda s: s["state"] == "stopped", 60)
    print(
        f"\nreported unavailable {detected:.1f} s after the kill; refused in "
        f"{slowest:.2f} s at most; reconciled {time.monotonic() - back:.1f} s after the "
        "worker was back"
    )
    assert reconciled["available"] is True and reconciled["unavailable_reason"] == ""
    with e2e_stack.blocker.unblock():
        event = AuditEvent.objects.get(verb="sandbox.reconciled", sandbox_id=lost["id"])
    assert event.data["from"] == "ready" and event.data["to"] == "stopped"

    status, body = api.post(f"/v1/sandboxes/{lost['id']}/start", {"wait": True})
    assert status == 200 and body["sandbox"]["state"] == "ready", body
    assert api.run(lost["id"], "echo back")["stdout"] == "back\n"
