"""A real worker process measures its host and its guests in each heartbeat (this machine's
/proc/meminfo, CPUs and disk; the fake hypervisor's domain stats), the figures land on the
Host row, and GET /v1/hosts shows them with the committed memory."""

from __future__ import annotations

import os
import time

import pytest
from django.contrib.auth.models import Permission

from sandboxes import services
from sandboxes.choices import OperationStatus
from sandboxes.drivers.fake import FAKE_QEMU_OVERHEAD_KIB
from sandboxes.models import Host
from tests.conftest import make_agent

from .conftest import host_worker

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def beat_until(host: Host, check, timeout: float = 20) -> dict:
    """The host's figures once `check(resources)` holds (the worker beats every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        host.refresh_from_db(fields=["resources", "last_heartbeat"])
        if check(host.resources):
            return host.resources
        time.sleep(0.2)
    raise AssertionError(f"the heartbeat never reported it; last: {host.resources}")


def test_the_workers_heartbeat_figures_land_on_the_host_and_in_get_hosts(
    django_db_blocker, host, source, django_user_model
):
    operator = make_agent(django_user_model, "olga", key_name="ops")
    operator.user.user_permissions.add(Permission.objects.get(codename="view_host"))
    owner = django_user_model.objects.create_user("ingrid")
    with host_worker(django_db_blocker, VSB_HEARTBEAT_SECONDS="1"):
        measured = beat_until(host, lambda r: "memory_total_mb" in r)
        with open("/proc/meminfo") as meminfo:
            assert measured["memory_total_mb"] == int(meminfo.readline().split()[1]) // 1024
        assert measured["cpus"] == os.cpu_count()
        assert 0 < measured["disk_free_mb"] <= measured["disk_total_mb"]
        assert measured["guests"]["running"] == 0

        # A sandbox of 512 MiB: its domain runs (the fake guest never answers SSH, so it
        # stays booting until destroyed), and the next beats count it.
        op = services.create_sandbox(owner, source_vm_name="debian-base", memory_mb=512)
        guests = beat_until(host, lambda r: r.get("guests", {}).get("running") == 1)["guests"]
        assert guests == {"running": 1, "memory_mb": 512, "rss_mb": 512 + 50}
        assert FAKE_QEMU_OVERHEAD_KIB == 50 * 1024

        listed = operator.get("/v1/hosts").json()["hosts"]
        shown = next(h for h in listed if h["name"] == host.name)
        assert shown["alive"] and shown["accepting"]
        assert shown["resources"]["guests"] == guests
        assert shown["resources"]["memory_total_mb"] == measured["memory_total_mb"]
        assert shown["committed_memory_mb"] == 512
        assert shown["free_memory_mb"] == measured["memory_total_mb"] - 512  # ratio 1.0

        destroy = services.destroy_sandbox(op.sandbox, owner)
        deadline = time.monotonic() + 30
        while not destroy.is_done and time.monotonic() < deadline:
            time.sleep(0.2)
            destroy.refresh_from_db()
        assert destroy.status == OperationStatus.SUCCEEDED, destroy.error
        beat_until(host, lambda r: r.get("guests", {}).get("running") == 0)


def test_many_creates_at_once_never_overshoot_any_hosts_memory(
    alice, host, source, sent_tasks, settings
):
    from django.utils import timezone

    from sandboxes.models import Sandbox
    from tests.integration.test_quotas import client_of, in_threads

    # Bridged networking: no SSH port is allocated, whose unique index would otherwise
    # serialise the creates by itself and hide a race.
    settings.VSB = {**settings.VSB, "NETWORK_MODE": "network", "MEMORY_OVERCOMMIT": 1.0}
    Host.objects.filter(pk=host.pk).update(resources={"memory_total_mb": 1024})
    other = Host.objects.create(
        name="kvm-other", last_heartbeat=timezone.now(), resources={"memory_total_mb": 768}
    )
    clients = [client_of(alice) for _ in range(8)]
    body = {"source_vm_name": "debian-base", "memory_mb": 256}
    responses = in_threads(8, lambda i: clients[i].post("/v1/sandboxes", body, format="json"))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 7 + [503], [r.content for r in responses]
    refused = next(r for r in responses if r.status_code == 503).json()["error"]
    assert refused["code"] == "capacity"
    placed = {
        h.name: Sandbox.objects.filter(host=h).count()
        for h in (Host.objects.get(pk=host.pk), other)
    }
    assert placed == {host.name: 4, "kvm-other": 3}
