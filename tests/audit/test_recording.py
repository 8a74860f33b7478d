"""What lands in the trail: state-changing API calls, lifecycle transitions, commands with
output hashes, logins and admin actions, each with actor, source IP and request id."""

from __future__ import annotations

import hashlib
import json

import pytest

from audit.models import AuditEvent
from sandboxes import lifecycle, services
from sandboxes.choices import CommandStatus, SandboxState
from sandboxes.models import Command
from sandboxes.remote.ssh import CommandResult

pytestmark = pytest.mark.django_db


def test_a_state_changing_api_call_is_recorded_with_actor_ip_and_request_id(
    alice, host, source, sent_tasks
):
    response = alice.post(
        "/v1/sandboxes",
        {"source_vm_name": "debian-base"},
        format="json",
        HTTP_X_REQUEST_ID="req-123",
        REMOTE_ADDR="127.0.0.9",
    )
    assert response.status_code == 202
    assert response["X-Request-ID"] == "req-123"
    call = AuditEvent.objects.get(verb="api.call")
    assert call.actor == "user:alice"
    assert call.source_ip == "127.0.0.9"
    assert call.request_id == "req-123"
    assert call.data == {"method": "POST", "path": "/v1/sandboxes", "status": 202}
    create = AuditEvent.objects.get(verb="sandbox.create")
    assert create.request_id == "req-123"
    assert str(create.sandbox_id) == response.json()["sandbox"]["id"]


def test_reads_are_not_recorded(alice):
    alice.get("/v1/sandboxes")
    assert not AuditEvent.objects.filter(verb="api.call").exists()


def test_a_lifecycle_transition_is_recorded(alice, host, source, sent_tasks):
    op = services.create_sandbox(alice.user, source_vm_name="debian-base")
    assert lifecycle.transition(op.sandbox_id, SandboxState.PROVISIONING)
    # (The create itself moved it from queued to requested: admitted to a boot slot.)
    event = AuditEvent.objects.filter(verb="sandbox.transition").latest("seq")
    assert event.sandbox_id == op.sandbox_id
    assert event.actor == "system" and event.agent == op.sandbox.agent_id
    assert event.data == {"to": "provisioning"}


def test_a_finished_command_is_recorded_with_hashes_of_its_output(alice, host, source, sent_tasks):
    op = services.create_sandbox(alice.user, source_vm_name="debian-base")
    cmd = Command.objects.create(
        sandbox_id=op.sandbox_id, requested_by=alice.user, command="echo hi", timeout_seconds=5
    )
    result = CommandResult(0, b"hi\n", b"", False, False, False, 3)
    services.finish_command(cmd.id, status=CommandStatus.FINISHED, result=result)
    event = AuditEvent.objects.get(verb="command.finished")
    assert event.actor == "user:alice"
    assert event.data["command"] == "echo hi"
    assert event.data["exit_code"] == 0
    assert event.data["stdout_sha256"] == hashlib.sha256(b"hi\n").hexdigest()
    assert event.data["stderr_sha256"] == hashlib.sha256(b"").hexdigest()


def test_logins_and_failed_logins_are_recorded(client, django_user_model):
    django_user_model.objects.create_user("olga", password="right-password", is_staff=True)
    assert client.login(username="olga", password="right-password")
    assert not client.login(username="olga", password="wrong")
    verbs = list(AuditEvent.objects.values_list("verb", "actor"))
    assert ("auth.login", "user:olga") in verbs
    assert ("auth.login_failed", "anonymous") in verbs
    failed = AuditEvent.objects.get(verb="auth.login_failed")
    assert "wrong" not in json.dumps(failed.data)


def test_an_admin_action_is_recorded_with_the_operator(
    client, django_user_model, host, source, sent_tasks
):
    oscar = django_user_model.objects.create_superuser("oscar", "o@example.com", "pw")
    client.force_login(oscar)
    agent = django_user_model.objects.create_user("agent-x")
    op = services.create_sandbox(agent, source_vm_name="debian-base")
    client.post(
        "/admin/sandboxes/sandbox/",
        {"action": "destroy_selected", "_selected_action": [str(op.sandbox_id)]},
        follow=True,
    )
    event = AuditEvent.objects.get(verb="sandbox.destroy")
    assert event.actor == "user:oscar"
    assert event.sandbox_id == op.sandbox_id


def test_the_admin_offers_no_add_edit_or_delete_for_audit_events(client, django_user_model):
    oscar = django_user_model.objects.create_superuser("oscar", "o@example.com", "pw")
    client.force_login(oscar)  # itself an audited login
    event = AuditEvent.objects.first()
    page = client.get(f"/admin/audit/auditevent/{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert client.get(f"/admin/audit/auditevent/{event.pk}/delete/").status_code == 403
    listing = client.get("/admin/audit/auditevent/")
    assert listing.status_code == 200
    assert b'name="action"' not in listing.content
    assert (
        client.post(f"/admin/audit/auditevent/{event.pk}/change/", {"verb": "x"}).status_code == 403
    )
    assert AuditEvent.objects.get(pk=event.pk).verb == event.verb
