"""Approval requests over REST: creating without waiting, deciding as an operator, and every
way a decision is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals import services
from approvals.models import ApprovalRequest
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def ask_async(client, **body):
    payload = {"prompt": "May I restart nginx on prod-1?", "action_type": "destructive", **body}
    return client.post("/api/v1/human/ask-async", payload, format="json")


def test_an_agent_creates_a_pending_request_with_a_deadline(alice):
    response = ask_async(alice, timeout_secs=120, urgency="high", alternatives=["reload instead"])
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "pending" and body["approved"] is False
    assert body["requested_by"] == "alice" and body["urgency"] == "high"
    assert body["timeout_seconds"] == 120
    assert AuditEvent.objects.filter(verb="approval.requested", target_id=body["id"]).exists()


def test_the_same_idempotency_key_returns_the_same_request(alice):
    first = ask_async(alice, idempotency_key="deploy-42").json()
    again = alice.post(
        "/v1/approvals",
        {"prompt": "May I restart nginx on prod-1?", "action_type": "destructive"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="deploy-42",
    )
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert ApprovalRequest.objects.count() == 1


def test_an_idempotency_key_reused_for_another_question_is_a_409(alice):
    ask_async(alice, idempotency_key="k1")
    response = ask_async(alice, idempotency_key="k1", prompt="Something else?")
    assert response.status_code == 409
    assert response.json()["error"]["fields"] == {
        "idempotency_key": ["already used for a different request"]
    }


def test_bad_input_names_the_field(alice):
    response = ask_async(alice, timeout_secs=0)
    assert response.status_code == 400
    assert "timeout_seconds" in response.json()["error"]["fields"]
    response = ask_async(alice, urgenc="high")
    assert response.json()["error"]["fields"] == {"urgenc": ["Unknown field."]}
    assert alice.post("/v1/approvals", {}, format="json").json()["error"]["fields"].keys() == {
        "prompt"
    }


def test_an_operator_approves_and_a_second_decision_gets_409(alice, dora, dan):
    req = ask_async(alice).json()
    approved = dora.post(f"/v1/approvals/{req['id']}/approve", {"reason": "go"}, format="json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["status"] == "approved"
    assert approved.json()["approved_by"] == "dora"
    second = dan.post(f"/v1/approvals/{req['id']}/deny", {"reason": "no"}, format="json")
    assert second.status_code == 409
    assert "already approved by dora" in second.json()["error"]["message"]
    assert AuditEvent.objects.filter(verb="approval.approved", actor="user:dora").count() == 1


def test_an_agent_can_never_decide_not_even_its_own_request(alice, bob):
    req = ask_async(alice).json()
    assert bob.post(f"/v1/approvals/{req['id']}/approve", format="json").status_code in (403, 404)
    response = alice.post(f"/v1/approvals/{req['id']}/approve", format="json")
    assert response.status_code == 403
    assert ApprovalRequest.objects.get(pk=req["id"]).status == "pending"


def test_an_operator_cannot_decide_a_request_they_asked_themselves(dora):
    req = ask_async(dora).json()
    response = dora.post(f"/v1/approvals/{req['id']}/approve", format="json")
    assert response.status_code == 403
    assert "the one who asked" in response.json()["error"]["message"]


def test_staff_without_the_decide_permission_gets_403(alice, olivia):
    req = ask_async(alice).json()
    response = olivia.post(f"/v1/approvals/{req['id']}/approve", format="json")
    assert response.status_code == 403
    assert "decide_approvalrequest" in response.json()["error"]["message"]


def test_expiry_is_reported_apart_from_denial(alice, dora):
    req = ask_async(alice, timeout_secs=60).json()
    ApprovalRequest.objects.filter(pk=req["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.expire_overdue() == 1
    body = alice.get(f"/v1/approvals/{req['id']}").json()
    assert body["status"] == "expired" and body["approved"] is False and body["decided_by"] is None
    late = dora.post(f"/v1/approvals/{req['id']}/approve", format="json")
    assert late.status_code == 409 and "expired" in late.json()["error"]["message"]
    assert AuditEvent.objects.filter(verb="approval.expired").count() == 1


def test_a_decision_after_the_deadline_but_before_the_sweep_is_a_409(alice, dora):
    req = ask_async(alice, timeout_secs=60).json()
    ApprovalRequest.objects.filter(pk=req["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = dora.post(f"/v1/approvals/{req['id']}/approve", format="json")
    assert response.status_code == 409
    assert ApprovalRequest.objects.get(pk=req["id"]).status == "expired"


def test_the_requester_cancels_and_lists_pending_in_the_originals_shape(alice, bob):
    keep = ask_async(alice).json()
    drop = ask_async(alice, prompt="second").json()
    ask_async(bob, prompt="bob's")
    response = alice.delete(f"/api/v1/human/pending/{drop['id']}")
    assert response.json() == {"request_id": drop["id"], "cancelled": True, "status": "cancelled"}
    pending = alice.get("/api/v1/human/pending").json()["pending"]
    assert [p["id"] for p in pending] == [keep["id"]]
    assert bob.get(f"/api/v1/human/pending/{keep['id']}").status_code == 404


def test_the_originals_respond_route_decides_as_the_authenticated_caller(alice, dora):
    req = ask_async(alice).json()
    response = dora.post(
        "/api/v1/human/respond",
        {
            "request_id": req["id"],
            "approved": False,
            "comment": "not today",
            "approved_by": "someone-else",
        },
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    assert (
        body["status"] == "denied"
        and body["decided_by"] == "dora"
        and body["comment"] == "not today"
    )


def test_bulk_approval_reports_each_request(alice, dora):
    ids = [ask_async(alice, prompt=f"q{i}").json()["id"] for i in range(3)]
    dora.post(f"/v1/approvals/{ids[0]}/deny", format="json")
    response = dora.post("/v1/approvals/bulk", {"ids": ids, "decision": "approve"}, format="json")
    results = {r["id"]: r for r in response.json()["results"]}
    assert results[ids[0]]["error"]["code"] == "already_decided"
    assert results[ids[1]]["status"] == results[ids[2]]["status"] == "approved"
    assert (
        alice.post(
            "/v1/approvals/bulk", {"ids": ids, "decision": "approve"}, format="json"
        ).status_code
        == 403
    )


def test_an_approval_is_consumed_once_and_only_for_its_payload(alice, dora):
    req = ask_async(alice, kind="action", payload={"playbook": 3}).json()
    dora.post(f"/v1/approvals/{req['id']}/approve", format="json")
    with pytest.raises(services.Conflict, match="different action"):
        services.consume(req["id"], expected_payload={"playbook": 4})
    services.consume(req["id"], expected_payload={"playbook": 3})
    with pytest.raises(services.Conflict, match="already used"):
        services.consume(req["id"], expected_payload={"playbook": 3})


def test_an_operator_decides_in_the_admin_through_the_same_service(alice, dora, client):
    dora.user.is_staff = True
    dora.user.save()
    from django.contrib.auth.models import Permission

    dora.user.user_permissions.add(Permission.objects.get(codename="view_approvalrequest"))
    client.force_login(dora.user)
    req = ask_async(alice).json()
    page = client.get("/admin/approvals/approvalrequest/")
    assert b"approve_selected" in page.content
    client.post(
        "/admin/approvals/approvalrequest/",
        {"action": "approve_selected", "_selected_action": [req["id"]]},
        follow=True,
    )
    decided = ApprovalRequest.objects.get(pk=req["id"])
    assert decided.status == "approved" and decided.decided_by == dora.user
    assert AuditEvent.objects.filter(verb="approval.approved", actor="user:dora").exists()
    assert client.get(f"/admin/approvals/approvalrequest/{req['id']}/delete/").status_code == 403


def test_an_operator_reads_the_request_and_decides_on_its_admin_page(alice, dora, client):
    from django.contrib.auth.models import Permission

    dora.user.is_staff = True
    dora.user.save()
    dora.user.user_permissions.add(Permission.objects.get(codename="view_approvalrequest"))
    client.force_login(dora.user)
    req = ask_async(
        alice, kind="action", payload={"playbook": "p1", "version": 2}, context="- hosts: all"
    ).json()
    page = client.get(f"/admin/approvals/approvalrequest/{req['id']}/change/")
    assert page.status_code == 200
    assert (
        b"May I restart nginx on prod-1?" in page.content
        and b"&quot;version&quot;: 2" in page.content
    )
    assert b'value="Approve"' in page.content and b"- hosts: all" in page.content
    client.post(
        f"/admin/approvals/approvalrequest/{req['id']}/decide/",
        {"decision": "Deny", "reason": "not during business hours"},
    )
    decided = ApprovalRequest.objects.get(pk=req["id"])
    assert (decided.status, decided.reason, decided.decided_by) == (
        "denied",
        "not during business hours",
        dora.user,
    )
    assert AuditEvent.objects.filter(
        verb="approval.denied", actor="user:dora", target_id=req["id"]
    ).exists()
    after = client.get(f"/admin/approvals/approvalrequest/{req['id']}/change/")
    assert b'value="Approve"' not in after.content and b"Denied by dora" in after.content
    # A second click is refused by the same compare-and-set, with a message, not a 500.
    again = client.post(
        f"/admin/approvals/approvalrequest/{req['id']}/decide/",
        {"decision": "Approve"},
        follow=True,
    )
    assert again.status_code == 200 and b"already denied" in again.content


def test_a_request_names_only_a_sandbox_its_requester_may_see(
    alice, bob, olivia, host, source, sent_tasks
):
    from sandboxes import services as sandboxes

    sandbox_id = str(sandboxes.create_sandbox(alice.user, source_vm_name="debian-base").sandbox_id)
    own = ask_async(alice, sandbox_id=sandbox_id)
    assert own.status_code == 201 and own.json()["sandbox_id"] == sandbox_id
    others = ask_async(bob, sandbox_id=sandbox_id)
    assert others.status_code == 400 and "sandbox_id" in others.json()["error"]["fields"]
    assert ask_async(olivia, sandbox_id=sandbox_id).status_code == 201


def test_a_new_request_enqueues_its_webhook_after_commit_only_when_one_is_set(
    alice, settings, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.create_request(alice.user, prompt="Nobody listens?")
    assert sent_tasks == []
    settings.APPROVALS = {**settings.APPROVALS, "WEBHOOK_URL": "http://127.0.0.1:9/hook"}
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        req, _ = services.create_request(alice.user, prompt="Reboot db-1?")
    assert sent_tasks == []
    for callback in callbacks:
        callback()
    assert sent_tasks == [("approvals.send_webhook", [str(req.id)], "control")]
