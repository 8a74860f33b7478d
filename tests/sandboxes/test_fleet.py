"""A fleet of hosts, as the control plane sees it: a host is alive while its worker beat within
VSB_HOST_DEAD_SECONDS; a sandbox of a silent host says so in its answers and keeps its
state; new work for it is a 503 `host_unavailable` naming the host, sent nowhere, except a
destroy; a create takes its workdir and SSH port from the host it is placed on. (Two real
hosts: tests/e2e/test_two_hosts.py.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from sandboxes import services
from sandboxes.choices import SandboxState
from sandboxes.models import Command, Host, Sandbox

pytestmark = pytest.mark.django_db


def silence(host: Host, seconds: float) -> None:
    host.last_heartbeat = timezone.now() - timedelta(seconds=seconds)
    host.save(update_fields=["last_heartbeat"])


@pytest.fixture
def ready(alice, host, source, sent_tasks, django_capture_on_commit_callbacks) -> Sandbox:
    """alice's sandbox, ready on the test host (its worker alive)."""
    with django_capture_on_commit_callbacks(execute=True):
        reply = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json")
    assert reply.status_code == 202, reply.content
    sandbox = Sandbox.objects.get(pk=reply.json()["sandbox"]["id"])
    sandbox.state = SandboxState.READY
    sandbox.save(update_fields=["state"])
    sent_tasks.clear()
    return sandbox


def test_a_host_is_alive_while_its_last_beat_is_within_the_setting(host, settings):
    settings.VSB = {**settings.VSB, "HOST_DEAD_SECONDS": 30}
    silence(host, 25)
    assert host.is_alive() and host.unavailable_reason() == ""
    silence(host, 35)
    assert not host.is_alive()
    assert host.unavailable_reason().startswith(f"host {host.name} has no live worker (last")
    assert host.is_alive(within_seconds=60)


def test_a_sandbox_of_a_silent_host_answers_unavailable_and_keeps_its_state(alice, host, ready):
    answer = alice.get(f"/v1/sandboxes/{ready.pk}").json()["sandbox"]
    assert answer["available"] is True and answer["unavailable_reason"] == ""

    silence(host, 3600)
    answer = alice.get(f"/v1/sandboxes/{ready.pk}").json()["sandbox"]
    assert answer["state"] == SandboxState.READY
    assert answer["available"] is False
    assert f"host {host.name} has no live worker" in answer["unavailable_reason"]
    assert alice.get("/v1/sandboxes").json()["results"][0]["available"] is False


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "command", {"command": "true"}),
        ("post", "stop", {}),
        ("post", "snapshots", {"name": "s1"}),
        ("get", "files/stat?path=/", None),
        ("get", "terminals/sessions", None),
    ],
)
def test_new_work_for_a_silent_hosts_sandbox_is_a_503_naming_the_host_and_sent_nowhere(
    alice, host, ready, sent_tasks, method, path, body
):
    silence(host, 3600)
    response = getattr(alice, method)(f"/v1/sandboxes/{ready.pk}/{path}", body, format="json")
    assert response.status_code == 503, response.content
    error = response.json()["error"]
    assert error["code"] == "host_unavailable"
    assert f"host {host.name} has no live worker" in error["message"]
    assert sent_tasks == []
    assert not Command.objects.exists()


def test_a_destroy_is_accepted_while_the_host_is_silent(alice, host, ready, sent_tasks):
    silence(host, 3600)
    response = alice.delete(f"/v1/sandboxes/{ready.pk}")
    assert response.status_code == 202, response.content
    assert response.json()["sandbox"]["state"] == SandboxState.DESTROYING


def test_a_create_takes_its_workdir_and_port_from_its_hosts_row(alice, host, source, sent_tasks):
    services.record_host_setup(host, sandbox_dir="/srv/kvm-b/sandboxes/", port_range=(50100, 50199))
    first = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json").json()
    second = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json").json()
    assert [first["sandbox"]["ssh_port"], second["sandbox"]["ssh_port"]] == [50100, 50101]
    sandbox = Sandbox.objects.get(pk=first["sandbox"]["id"])
    assert sandbox.workdir == f"/srv/kvm-b/sandboxes/{sandbox.name}"
