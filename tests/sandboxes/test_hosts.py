"""Choosing a KVM host: only hosts with a live worker and room, least loaded first, and the
host a source lives on when it is bound to one. Tasks go to the chosen host's own queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import Unavailable
from sandboxes import services
from sandboxes.models import Host

pytestmark = pytest.mark.django_db


def live_host(name: str, **kw) -> Host:
    return Host.objects.create(name=name, last_heartbeat=timezone.now(), **kw)


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("hana")


def test_it_routes_each_create_to_the_least_loaded_live_host(
    source, owner, sent_tasks, django_capture_on_commit_callbacks
):
    live_host("kvm-a")
    live_host("kvm-b")
    queues = []
    for _ in range(4):
        with django_capture_on_commit_callbacks(execute=True):
            op = services.create_sandbox(owner, source_vm_name="debian-base")
        queues.append(op.queue)
    assert sorted(queues) == ["kvm.kvm-a", "kvm.kvm-a", "kvm.kvm-b", "kvm.kvm-b"]
    assert [queue for _, _, queue in sent_tasks] == queues


def test_it_skips_hosts_without_a_recent_heartbeat_or_room(source, owner, sent_tasks):
    Host.objects.create(name="silent", last_heartbeat=timezone.now() - timedelta(minutes=5))
    live_host("full", capacity=0)
    live_host("roomy")
    assert services.create_sandbox(owner, source_vm_name="debian-base").host.name == "roomy"


def test_it_says_which_host_is_full(source, owner):
    live_host("tiny", capacity=0)
    with pytest.raises(Unavailable, match="tiny is full"):
        services.create_sandbox(owner, source_vm_name="debian-base")


def test_it_keeps_a_source_bound_to_its_host(source, owner, sent_tasks):
    live_host("other")
    home = live_host("home")
    source.host = home
    source.save(update_fields=["host"])
    for _ in range(2):
        assert services.create_sandbox(owner, source_vm_name="debian-base").host == home


def test_it_gives_each_live_sandbox_its_own_port_per_host(source, owner, sent_tasks):
    live_host("kvm-a")
    ports = {
        services.create_sandbox(owner, source_vm_name="debian-base").sandbox.ssh_port
        for _ in range(5)
    }
    assert len(ports) == 5
