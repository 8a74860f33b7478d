"""An apply is allowed only by the approval the server opened for it (issue 11, item 6): a
request somebody made by hand with the same action type and a matching payload is refused
at apply time, even approved; and the operator deciding sees the whole playbook, escaped."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals import services as approvals
from approvals.models import ApprovalRequest
from playbooks import runs
from playbooks.models import Inventory, PlaybookRun

from .conftest import dry_run, grant, store_playbook

pytestmark = pytest.mark.django_db


def test_an_apply_refuses_an_approved_request_a_caller_made_with_the_matching_payload(
    olga, dora, playbook, inventory
):
    check = dry_run(playbook, inventory, olga.user)
    payload = runs.apply_payload(playbook.latest, Inventory.objects.get(pk=inventory["id"]), check)
    # A row as the public routes made it before apply_playbook was reserved: same type, same
    # payload, a prompt that says something else.
    crafted = ApprovalRequest.objects.create(
        requested_by=olga.user,
        kind="action",
        action_type="apply_playbook",
        payload=payload,
        prompt="May I restart nginx? (harmless)",
        timeout_seconds=300,
        expires_at=timezone.now() + timedelta(seconds=300),
    )
    approvals.decide(dora.user, crafted.pk, approve=True)

    response = olga.post(
        f"/v1/playbooks/{playbook.id}/apply",
        {"inventory": inventory["id"], "approval_id": str(crafted.pk)},
        format="json",
    )
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "approval_not_system"
    assert not PlaybookRun.objects.filter(kind="apply").exists()
    crafted.refresh_from_db()
    assert crafted.consumed_at is None
    # The service refuses it too, under its row lock, whoever calls it.
    with pytest.raises(approvals.Conflict, match="not opened by the server"):
        approvals.consume(crafted.pk, expected_payload=payload, action_type="apply_playbook")
    with pytest.raises(approvals.Conflict, match="not opened by the server"):
        approvals.consume(crafted.pk, expected_payload=payload)
    # Asking again opens the server's own request, not the crafted one.
    asked = olga.post(
        f"/v1/playbooks/{playbook.id}/apply", {"inventory": inventory["id"]}, format="json"
    )
    assert (
        asked.json()["approval"]["id"] != str(crafted.pk)
        and asked.json()["approval"]["origin"] == "system"
    )


def test_an_agent_cannot_craft_an_apply_approval_nor_use_one(
    alice, olga, dora, playbook, inventory
):
    check = dry_run(playbook, inventory, olga.user)
    payload = runs.apply_payload(playbook.latest, Inventory.objects.get(pk=inventory["id"]), check)
    response = alice.post(
        "/v1/approvals",
        {
            "prompt": "Restart nginx on my sandbox?",
            "kind": "action",
            "action_type": "apply_playbook",
            "payload": payload,
        },
        format="json",
    )
    assert response.status_code == 400 and "action_type" in response.json()["error"]["fields"]
    server_made = olga.post(
        f"/v1/playbooks/{playbook.id}/apply", {"inventory": inventory["id"]}, format="json"
    ).json()["approval"]
    approvals.decide(dora.user, server_made["id"], approve=True)
    response = alice.post(
        f"/v1/playbooks/{playbook.id}/apply",
        {"inventory": inventory["id"], "approval_id": server_made["id"]},
        format="json",
    )
    assert response.status_code == 404
    assert not PlaybookRun.objects.filter(kind="apply").exists()


def test_the_operator_sees_the_whole_playbook_escaped_on_the_approval_page(
    alice, olga, dora, inventory, client, host, source, sent_tasks
):
    from sandboxes import services

    sandbox_id = services.create_sandbox(alice.user, source_vm_name="debian-base").sandbox_id
    # Guest-derived text: a file's contents with markup in it, and more than 20 KB of it.
    lines = [f"      line {i:05d} <b>not bold</b>\n" for i in range(2000)]
    text = (
        "- hosts: all\n  tasks:\n  - name: Write /srv/www/index.html\n    ansible.builtin.copy:\n"
        "      dest: /srv/www/index.html\n      content: !unsafe |\n"
        "      <script>alert('in the page')</script>\n" + "".join(lines) + "      END-OF-PLAYBOOK\n"
    )
    assert len(text) > 3 * 20000
    playbook = store_playbook(sandbox_id, text)
    dry_run(playbook, inventory, olga.user)
    approval = olga.post(
        f"/v1/playbooks/{playbook.id}/apply", {"inventory": inventory["id"]}, format="json"
    ).json()["approval"]
    assert approval["context"] == text and approval["origin"] == "system"
    assert (
        hashlib.sha256(approval["context"].encode()).hexdigest()
        == approval["payload"]["version_sha256"]
    )

    dora.user.is_staff = True
    dora.user.save()
    grant(dora.user, "view_approvalrequest")
    client.force_login(dora.user)
    page = client.get(f"/admin/approvals/approvalrequest/{approval['id']}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "END-OF-PLAYBOOK" in html and "line 01999" in html  # the end, past any 20 KB cut
    assert "<script>alert(" not in html and "<b>not bold" not in html
    assert "&lt;script&gt;alert(&#x27;in the page&#x27;)&lt;/script&gt;" in html
    assert html.count("line 00001 ") == 1, "shown once"
    assert 'id="approval-context"' in html and "overflow: auto" in html
    assert "Opened by the server" in html and 'value="Approve"' in html
