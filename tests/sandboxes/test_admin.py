"""Operators act on sandboxes from the admin through the same services as the API."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from sandboxes import services
from sandboxes.choices import SandboxState
from sandboxes.models import Sandbox

pytestmark = pytest.mark.django_db


def test_it_destroys_selected_sandboxes_through_the_service(
    operator_client, host, source, sent_tasks, django_user_model
):
    owner = django_user_model.objects.create_user("agent-x")
    op = services.create_sandbox(owner, source_vm_name="debian-base")
    response = operator_client.post(
        "/admin/sandboxes/sandbox/",
        {"action": "destroy_selected", "_selected_action": [str(op.sandbox_id)]},
        follow=True,
    )
    assert response.status_code == 200
    assert Sandbox.objects.get(pk=op.sandbox_id).state == SandboxState.DESTROYING


def test_it_offers_no_plain_delete_that_would_orphan_vms(
    operator_client, host, source, sent_tasks, django_user_model
):
    owner = django_user_model.objects.create_user("agent-y")
    op = services.create_sandbox(owner, source_vm_name="debian-base")
    page = operator_client.get("/admin/sandboxes/sandbox/")
    assert b"destroy_selected" in page.content
    assert b'value="delete_selected"' not in page.content
    assert (
        operator_client.get(f"/admin/sandboxes/sandbox/{op.sandbox_id}/delete/").status_code == 403
    )


def test_it_issues_an_api_key_shown_once_and_stores_only_its_hash(
    operator_client, django_user_model
):
    agent = django_user_model.objects.create_user("agent-z")
    response = operator_client.post(
        "/admin/accounts/apikey/add/", {"user": agent.pk, "name": "ci"}, follow=True
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    secret = next(word for m in shown for word in m.split() if word.startswith("vsb_"))
    assert accounts.authenticate_api_key(secret) == agent
    from accounts.models import ApiKey

    stored = ApiKey.objects.get(user=agent)
    assert secret not in (stored.key_hash, stored.prefix)


def test_it_saves_an_operators_host_edit_through_the_service_and_audits_it(operator_client, host):
    from audit.models import AuditEvent

    response = operator_client.post(
        f"/admin/sandboxes/host/{host.pk}/change/",
        {
            "name": host.name,
            "libvirt_uri": host.libvirt_uri,
            "enabled": "",
            "capacity": 3,
        },
        follow=True,
    )
    assert response.status_code == 200
    host.refresh_from_db()
    assert (host.enabled, host.capacity) == (False, 3)
    assert host.queue_name == f"kvm.{host.name}"
    assert AuditEvent.objects.filter(verb="admin.change", target_id=str(host.pk)).exists()


def test_an_operator_sets_a_hosts_overcommit_and_clears_its_count_cap(operator_client, host):
    host.capacity = 8
    services.save_host(host)
    response = operator_client.post(
        f"/admin/sandboxes/host/{host.pk}/change/",
        {
            "name": host.name,
            "libvirt_uri": host.libvirt_uri,
            "enabled": "on",
            "capacity": "",
            "memory_overcommit": "1.25",
        },
        follow=True,
    )
    assert response.status_code == 200
    host.refresh_from_db()
    assert (host.capacity, host.memory_overcommit) == (None, 1.25)
    assert services.overcommit_ratio(host) == 1.25
    listing = operator_client.get("/admin/sandboxes/host/")
    assert b"Memory committed / limit (MiB)" in listing.content


def test_the_drain_action_drains_selected_hosts_through_the_service(operator_client, host):
    from audit.models import AuditEvent

    response = operator_client.post(
        "/admin/sandboxes/host/",
        {"action": "drain_selected", "_selected_action": [str(host.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    host.refresh_from_db()
    assert host.draining
    assert AuditEvent.objects.filter(verb="host.drain", actor="user:oscar").exists()
    operator_client.post(
        "/admin/sandboxes/host/",
        {"action": "undrain_selected", "_selected_action": [str(host.pk)]},
    )
    host.refresh_from_db()
    assert not host.draining
