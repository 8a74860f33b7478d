"""Inventories, dry runs and the approval gate of an apply, at the service and API level
(tasks recorded, not run; tests/e2e/test_playbooks.py runs them on real VMs)."""

from __future__ import annotations

import hashlib

import paramiko
import pytest
from django.contrib.auth.models import Permission

from approvals import services as approvals
from sandboxes import services
from sandboxes.playbooks import runs, secrets
from sandboxes.playbooks.models import InventoryHost, Playbook, PlaybookRun, PlaybookVersion

pytestmark = pytest.mark.django_db


def keypair() -> tuple[str, str]:
    import io

    key = paramiko.Ed25519Key.from_private_key(io.StringIO(_ed25519_pem()))
    return _ed25519_pem(), f"{key.get_name()} {key.get_base64()}"


def _ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    global _PEM
    if "_PEM" not in globals():
        _PEM = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode()
    return _PEM


@pytest.fixture
def olga(db, django_user_model):
    user = django_user_model.objects.create_user("olga", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        codename__in=["add_inventory", "decide_approvalrequest", "change_playbook"]))
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    client.user = user
    return client


@pytest.fixture
def playbook(alice, host, source, sent_tasks):
    op = services.create_sandbox(alice.user, source_vm_name="debian-base")
    pb = Playbook.objects.create(sandbox_id=op.sandbox_id, from_name="a", to_name="b", status="ready")
    text = "- hosts: all\n  tasks: []\n"
    PlaybookVersion.objects.create(playbook=pb, number=1, yaml=text, sha256=hashlib.sha256(text.encode()).hexdigest(),
                                   generated=True, syntax_ok=True)
    return pb


@pytest.fixture
def inventory(olga):
    private, public = keypair()
    response = olga.post("/v1/inventories", {"name": "prod", "hosts": [
        {"name": "web-1", "address": "127.0.0.1", "port": 2222, "host_key": public, "private_key": private}
    ]}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["inventory"]


def test_credentials_are_encrypted_at_rest_and_never_returned(olga, inventory):
    row = InventoryHost.objects.get(name="web-1")
    assert "PRIVATE KEY" not in row.private_key_encrypted
    assert secrets.decrypt(row.private_key_encrypted) == _ed25519_pem()
    for body in (inventory, olga.get(f"/v1/inventories/{inventory['id']}").json(), olga.get("/v1/inventories").json()):
        assert "PRIVATE KEY" not in str(body) and "private_key_encrypted" not in str(body)
    assert inventory["hosts"][0]["has_private_key"] is True


def test_registering_targets_needs_the_permission_and_valid_keys(alice, olga):
    assert alice.post("/v1/inventories", {"name": "x", "hosts": [{"name": "h", "sandbox_id": None}]},
                      format="json").status_code == 403
    response = olga.post("/v1/inventories", {"name": "x", "hosts": [
        {"name": "h", "address": "10.0.0.1", "host_key": "not a key", "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}
    ]}, format="json")
    assert response.status_code == 400 and "hosts.0.host_key" in response.json()["error"]["fields"]
    response = olga.post("/v1/inventories", {"name": "y", "hosts": [{"name": "h", "address": "10.0.0.1"}]}, format="json")
    assert response.status_code == 400 and "hosts.0.host_key" in response.json()["error"]["fields"]


def test_an_apply_needs_a_dry_run_then_an_approval_that_matches(alice, olga, playbook, inventory, django_capture_on_commit_callbacks, sent_tasks):
    url = f"/v1/playbooks/{playbook.id}/apply"
    body = {"inventory": inventory["id"]}
    assert alice.post(url, body, format="json").json()["error"]["code"] == "dry_run_required"
    with django_capture_on_commit_callbacks(execute=True):
        check = alice.post(f"/v1/playbooks/{playbook.id}/check", body, format="json")
    assert check.status_code == 202
    assert ("sandboxes.run_playbook", [check.json()["run"]["id"]], "control") in sent_tasks
    PlaybookRun.objects.filter(pk=check.json()["run"]["id"]).update(status="successful", host_stats={"web-1": {"changed": 2}})

    refused = alice.post(url, body, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "approval_required"
    approval = refused.json()["approval"]
    assert approval["payload"]["inventory_fingerprint"] == runs.fingerprint(runs.get_inventory(inventory["id"]))
    assert alice.post(url, body, format="json").json()["approval"]["id"] == approval["id"]  # asked once
    assert alice.post(url, {**body, "approval_id": approval["id"]}, format="json").json()["error"]["code"] == "not_approved"

    approvals.decide(olga.user, approval["id"], approve=True)
    with django_capture_on_commit_callbacks(execute=True):
        started = alice.post(url, {**body, "approval_id": approval["id"]}, format="json")
    assert started.status_code == 202, started.content
    assert started.json()["run"]["kind"] == "apply"
    again = alice.post(url, {**body, "approval_id": approval["id"]}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "approval_used"


def test_a_changed_inventory_voids_the_approval(alice, olga, playbook, inventory):
    body = {"inventory": inventory["id"]}
    run = PlaybookRun.objects.create(version=playbook.latest, inventory_id=inventory["id"], kind="check",
                                     status="successful", queue="control")
    approval = alice.post(f"/v1/playbooks/{playbook.id}/apply", body, format="json").json()["approval"]
    assert approval["payload"]["dry_run_id"] == str(run.id)
    approvals.decide(olga.user, approval["id"], approve=True)
    InventoryHost.objects.filter(name="web-1").update(address="127.0.0.2")
    response = alice.post(f"/v1/playbooks/{playbook.id}/apply", {**body, "approval_id": approval["id"]}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "approval_mismatch"


def test_a_run_is_cancelled_before_it_starts(alice, playbook, inventory):
    run = PlaybookRun.objects.create(version=playbook.latest, inventory_id=inventory["id"], kind="check", queue="control",
                                     requested_by=alice.user)
    body = alice.post(f"/v1/playbook-runs/{run.id}/cancel", format="json").json()["run"]
    assert body["status"] == "canceled" and body["cancel_requested"] is True
    assert alice.post(f"/v1/playbook-runs/{run.id}/cancel", format="json").status_code == 409


def test_operators_edit_playbooks_as_new_versions_and_agents_cannot(alice, olga, playbook):
    assert alice.post(f"/v1/playbooks/{playbook.id}/versions", {"yaml": "- hosts: all\n  tasks: []\n"},
                      format="json").status_code == 403
    response = olga.post(f"/v1/playbooks/{playbook.id}/versions",
                         {"yaml": "- hosts: all\n  tasks:\n  - ansible.builtin.ping: {}\n", "note": "ping first"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()["playbook"]
    assert body["version"] == 2 and body["versions"] == [1, 2] and body["syntax_ok"] is True
    assert alice.get(f"/v1/playbooks/{playbook.id}?version=1").json()["playbook"]["version"] == 1
    broken = olga.post(f"/v1/playbooks/{playbook.id}/versions", {"yaml": "- hosts: all\n  tasks: [\n"}, format="json")
    assert broken.json()["playbook"]["syntax_ok"] is False


def test_an_operator_edits_in_the_admin_and_gets_a_new_version(client, olga, playbook):
    olga.user.set_password("pw")
    olga.user.save()
    client.force_login(olga.user)
    page = client.get(f"/admin/sandboxes/playbook/{playbook.id}/change/")
    assert page.status_code == 200 and b"tasks: []" in page.content
    text = "- hosts: all\n  tasks:\n  - ansible.builtin.ping: {}\n"
    client.post(f"/admin/sandboxes/playbook/{playbook.id}/change/", {
        "new_yaml": text, "note": "ping", "versions-TOTAL_FORMS": "1", "versions-INITIAL_FORMS": "1",
        "versions-MIN_NUM_FORMS": "0", "versions-MAX_NUM_FORMS": "1000",
        "versions-0-id": str(playbook.latest.id), "versions-0-playbook": str(playbook.id),
    }, follow=True)
    latest = Playbook.objects.get(pk=playbook.pk).latest
    assert latest.number == 2 and latest.yaml == text and latest.created_by == olga.user
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(verb="playbook.edit", actor="user:olga").exists()
