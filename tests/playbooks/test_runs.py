"""Inventories, dry runs and the approval gate of an apply, at the service and API level
(tasks recorded, not run; tests/e2e/test_playbooks.py runs them on real VMs)."""

from __future__ import annotations

import pytest

from approvals import services as approvals
from playbooks import runs, secrets
from playbooks.models import InventoryHost, Playbook, PlaybookRun

from .conftest import dry_run, ed25519_pem

pytestmark = pytest.mark.django_db


def test_credentials_are_encrypted_at_rest_and_never_returned(olga, inventory):
    row = InventoryHost.objects.get(name="web-1")
    assert "PRIVATE KEY" not in row.private_key_encrypted
    assert secrets.decrypt(row.private_key_encrypted) == ed25519_pem()
    for body in (
        inventory,
        olga.get(f"/v1/inventories/{inventory['id']}").json(),
        olga.get("/v1/inventories").json(),
    ):
        assert "PRIVATE KEY" not in str(body) and "private_key_encrypted" not in str(body)
    assert inventory["hosts"][0]["has_private_key"] is True


def test_registering_targets_needs_the_permission_and_valid_keys(alice, olga):
    assert (
        alice.post(
            "/v1/inventories",
            {"name": "x", "hosts": [{"name": "h", "sandbox_id": None}]},
            format="json",
        ).status_code
        == 404
    )
    response = olga.post(
        "/v1/inventories",
        {
            "name": "x",
            "hosts": [
                {
                    "name": "h",
                    "address": "10.0.0.1",
                    "host_key": "not a key",
                    "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----",
                }
            ],
        },
        format="json",
    )
    assert response.status_code == 400 and "hosts.0.host_key" in response.json()["error"]["fields"]
    response = olga.post(
        "/v1/inventories",
        {"name": "y", "hosts": [{"name": "h", "address": "10.0.0.1"}]},
        format="json",
    )
    assert response.status_code == 400 and "hosts.0.host_key" in response.json()["error"]["fields"]


def test_an_apply_needs_a_dry_run_then_an_approval_that_matches(
    olga, dora, playbook, inventory, django_capture_on_commit_callbacks, sent_tasks
):
    url = f"/v1/playbooks/{playbook.id}/apply"
    body = {"inventory": inventory["id"]}
    assert olga.post(url, body, format="json").json()["error"]["code"] == "dry_run_required"
    with django_capture_on_commit_callbacks(execute=True):
        check = olga.post(f"/v1/playbooks/{playbook.id}/check", body, format="json")
    assert check.status_code == 202
    # Not a sandbox target: any host's commands pool runs it.
    run = ("sandboxes.run_playbook", [check.json()["run"]["id"]], "control.commands")
    assert run in sent_tasks
    PlaybookRun.objects.filter(pk=check.json()["run"]["id"]).update(
        status="successful", host_stats={"web-1": {"changed": 2}}
    )

    refused = olga.post(url, body, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "approval_required"
    approval = refused.json()["approval"]
    assert approval["payload"]["inventory_fingerprint"] == runs.fingerprint(
        runs.get_inventory(olga.user, inventory["id"])
    )
    assert (
        olga.post(url, body, format="json").json()["approval"]["id"] == approval["id"]
    )  # asked once
    assert (
        olga.post(url, {**body, "approval_id": approval["id"]}, format="json").json()["error"][
            "code"
        ]
        == "not_approved"
    )

    approvals.decide(dora.user, approval["id"], approve=True)
    with django_capture_on_commit_callbacks(execute=True):
        started = olga.post(url, {**body, "approval_id": approval["id"]}, format="json")
    assert started.status_code == 202, started.content
    assert started.json()["run"]["kind"] == "apply"
    again = olga.post(url, {**body, "approval_id": approval["id"]}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "approval_used"


def test_a_changed_inventory_voids_the_approval(olga, dora, playbook, inventory):
    body = {"inventory": inventory["id"]}
    run = dry_run(playbook, inventory)
    approval = olga.post(f"/v1/playbooks/{playbook.id}/apply", body, format="json").json()[
        "approval"
    ]
    assert approval["payload"]["dry_run_id"] == str(run.id)
    approvals.decide(dora.user, approval["id"], approve=True)
    InventoryHost.objects.filter(name="web-1").update(address="127.0.0.2")
    response = olga.post(
        f"/v1/playbooks/{playbook.id}/apply", {**body, "approval_id": approval["id"]}, format="json"
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "approval_mismatch"


def test_a_run_is_cancelled_before_it_starts(olga, playbook, inventory):
    run = PlaybookRun.objects.create(
        version=playbook.latest,
        inventory_id=inventory["id"],
        kind="check",
        queue="control",
        requested_by=olga.user,
    )
    body = olga.post(f"/v1/playbook-runs/{run.id}/cancel", format="json").json()["run"]
    assert body["status"] == "canceled" and body["cancel_requested"] is True
    assert olga.post(f"/v1/playbook-runs/{run.id}/cancel", format="json").status_code == 409


def test_operators_edit_playbooks_as_new_versions_and_agents_cannot(alice, olga, playbook):
    assert (
        alice.post(
            f"/v1/playbooks/{playbook.id}/versions",
            {"yaml": "- hosts: all\n  tasks: []\n"},
            format="json",
        ).status_code
        == 403
    )
    response = olga.post(
        f"/v1/playbooks/{playbook.id}/versions",
        {"yaml": "- hosts: all\n  tasks:\n  - ansible.builtin.ping: {}\n", "note": "ping first"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()["playbook"]
    assert body["version"] == 2 and body["versions"] == [1, 2] and body["syntax_ok"] is True
    assert alice.get(f"/v1/playbooks/{playbook.id}?version=1").json()["playbook"]["version"] == 1
    broken = olga.post(
        f"/v1/playbooks/{playbook.id}/versions",
        {"yaml": "- hosts: all\n  tasks: [\n"},
        format="json",
    )
    assert broken.json()["playbook"]["syntax_ok"] is False


def test_an_operator_edits_in_the_admin_and_gets_a_new_version(client, olga, playbook):
    olga.user.set_password("pw")
    olga.user.save()
    client.force_login(olga.user)
    page = client.get(f"/admin/playbooks/playbook/{playbook.id}/change/")
    assert page.status_code == 200 and b"tasks: []" in page.content
    text = "- hosts: all\n  tasks:\n  - ansible.builtin.ping: {}\n"
    client.post(
        f"/admin/playbooks/playbook/{playbook.id}/change/",
        {
            "new_yaml": text,
            "note": "ping",
            "versions-TOTAL_FORMS": "1",
            "versions-INITIAL_FORMS": "1",
            "versions-MIN_NUM_FORMS": "0",
            "versions-MAX_NUM_FORMS": "1000",
            "versions-0-id": str(playbook.latest.id),
            "versions-0-playbook": str(playbook.id),
        },
        follow=True,
    )
    latest = Playbook.objects.get(pk=playbook.pk).latest
    assert latest.number == 2 and latest.yaml == text and latest.created_by == olga.user
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(verb="playbook.edit", actor="user:olga").exists()
