"""GET /v1/hosts and POST /v1/hosts/{name}/drain|undrain: the fleet as operators see it
(sandboxes.view_host or sandboxes.drain_host); to anyone else the routes name nothing."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from audit.models import AuditEvent
from sandboxes.choices import SandboxState
from sandboxes.models import Host, Sandbox
from tests.conftest import make_agent

pytestmark = pytest.mark.django_db

FIGURES = {
    "memory_total_mb": 24000,
    "memory_available_mb": 15000,
    "cpus": 2,
    "disk_total_mb": 100_000,
    "disk_free_mb": 40_000,
    "guests": {"running": 2, "memory_mb": 768, "rss_mb": 900},
}


def operator(django_user_model, username: str, *codenames: str):
    client = make_agent(django_user_model, username, key_name="ops")
    for codename in codenames:
        client.user.user_permissions.add(Permission.objects.get(codename=codename))
    return client


@pytest.fixture
def viewer(django_user_model):
    """vera may look at the hosts, not drain them."""
    return operator(django_user_model, "vera", "view_host")


@pytest.fixture
def drainer(django_user_model):
    """dmitri may drain hosts."""
    return operator(django_user_model, "dmitri", "drain_host")


@pytest.fixture
def fleet(source, alice):
    a = Host.objects.create(name="kvm-a", last_heartbeat=timezone.now(), resources=FIGURES)
    b = Host.objects.create(name="kvm-b", capacity=4, memory_overcommit=0.5)
    for i, (state, memory) in enumerate(
        [("ready", 512), ("ready", 256), ("stopped", 1024), ("destroyed", 256)]
    ):
        Sandbox.objects.create(
            name=f"sbx-{i}", owner=alice.user, host=a, source=source, state=state, memory_mb=memory
        )
    return a, b


def test_an_operator_sees_each_hosts_figures_committed_and_free_memory_and_counts(viewer, fleet):
    response = viewer.get("/v1/hosts")
    assert response.status_code == 200
    a, b = response.json()["hosts"]
    assert a == {
        "name": "kvm-a",
        "queue_name": "kvm.kvm-a",
        "enabled": True,
        "draining": False,
        "alive": True,
        "last_heartbeat": a["last_heartbeat"],
        "domain_type": "",
        "capacity": None,
        "memory_overcommit": None,
        "overcommit_ratio": 1.0,
        "resources": FIGURES,
        "memory_limit_mb": 24000,
        "committed_memory_mb": 768,
        "free_memory_mb": 24000 - 768,
        "holding_memory": 2,
        "accepting": True,
        "sandboxes": {"ready": 2, "stopped": 1},
    }
    assert a["last_heartbeat"]
    # No heartbeat yet: no figures, not alive, not accepting; its own limits shown.
    assert (b["alive"], b["accepting"], b["capacity"], b["overcommit_ratio"]) == (
        False,
        False,
        4,
        0.5,
    )
    assert b["resources"] == dict.fromkeys(FIGURES)
    assert (b["memory_limit_mb"], b["free_memory_mb"], b["sandboxes"]) == (None, None, {})


def test_one_host_by_name_and_an_unknown_name_is_a_404(viewer, fleet):
    assert viewer.get("/v1/hosts/kvm-a").json()["committed_memory_mb"] == 768
    response = viewer.get("/v1/hosts/kvm-zz")
    assert response.status_code == 404
    assert "No host 'kvm-zz' (known: kvm-a, kvm-b)" in response.json()["error"]["message"]


def test_agents_and_anonymous_callers_find_no_hosts_routes(alice, anonymous, fleet):
    for path in ("/v1/hosts", "/v1/hosts/kvm-a"):
        assert alice.get(path).status_code == 404
    for verb in ("drain", "undrain"):
        assert alice.post(f"/v1/hosts/kvm-a/{verb}").status_code == 404
    assert anonymous.get("/v1/hosts").status_code == 401
    assert not Host.objects.filter(draining=True).exists()


def test_a_viewer_may_not_drain(viewer, fleet):
    response = viewer.post("/v1/hosts/kvm-a/drain")
    assert response.status_code == 403
    assert "sandboxes.drain_host" in response.json()["error"]["message"]
    assert not Host.objects.get(name="kvm-a").draining


def test_draining_and_undraining_are_audited_and_change_placement(
    drainer, alice, fleet, sent_tasks
):
    Host.objects.filter(name="kvm-b").update(enabled=False)
    response = drainer.post("/v1/hosts/kvm-a/drain")
    assert response.status_code == 200
    assert (response.json()["draining"], response.json()["accepting"]) == (True, False)
    # The only enabled host drains: a create is refused saying so; its sandboxes stay listed.
    refused = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json")
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "draining")
    assert drainer.get("/v1/hosts/kvm-a").json()["sandboxes"] == {"ready": 2, "stopped": 1}
    response = drainer.post("/v1/hosts/kvm-a/undrain")
    assert (response.status_code, response.json()["draining"]) == (200, False)
    created = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json")
    assert created.status_code == 202
    events = AuditEvent.objects.filter(verb__startswith="host.").order_by("seq")
    assert [(e.verb, e.actor, e.data["changed"]) for e in events] == [
        ("host.drain", "user:dmitri", True),
        ("host.undrain", "user:dmitri", True),
    ]
    assert Sandbox.objects.filter(state=SandboxState.REQUESTED).count() == 1
