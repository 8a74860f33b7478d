"""Playbook personas and fixtures on top of tests/conftest.py: olga, an operator who may
register targets, run playbooks against them and edit playbooks (but not decide); dora, who
decides approvals; alice's playbook; a production inventory olga registered."""

from __future__ import annotations

import hashlib
import io

import paramiko
import pytest
from django.contrib.auth.models import Permission

from playbooks.models import Playbook, PlaybookRun, PlaybookVersion
from sandboxes import services
from tests.approvals.conftest import make_operator

OPERATOR_PERMISSIONS = ["view_inventory", "add_inventory", "run_inventory", "change_playbook"]


def ed25519_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    global _PEM
    if "_PEM" not in globals():
        _PEM = (
            Ed25519PrivateKey.generate()
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            .decode()
        )
    return _PEM


def keypair() -> tuple[str, str]:
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(ed25519_pem()))
    return ed25519_pem(), f"{key.get_name()} {key.get_base64()}"


def grant(user, *codenames: str) -> None:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))


@pytest.fixture
def olga(db, django_user_model):
    user = django_user_model.objects.create_user("olga", is_staff=True)
    grant(user, *OPERATOR_PERMISSIONS)
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    client.user = user
    return client


@pytest.fixture
def dora(db, django_user_model):
    """dora the decider: approves what olga asks (nobody decides their own request)."""
    return make_operator(django_user_model, "dora")


def store_playbook(sandbox_id, text: str = "- hosts: all\n  tasks: []\n") -> Playbook:
    pb = Playbook.objects.create(sandbox_id=sandbox_id, from_name="a", to_name="b", status="ready")
    PlaybookVersion.objects.create(
        playbook=pb,
        number=1,
        yaml=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        generated=True,
        syntax_ok=True,
    )
    return pb


def dry_run(playbook, inventory, user=None, **fields) -> PlaybookRun:
    """A dry run of the playbook's latest version against the inventory (its API body), as
    a worker leaves it: successful, one change on web-1, unless `fields` say otherwise."""
    return PlaybookRun.objects.create(
        version=playbook.latest,
        inventory_id=inventory["id"],
        kind="check",
        queue="control",
        requested_by=user,
        **{"status": "successful", "host_stats": {"web-1": {"changed": 1}}, **fields},
    )


@pytest.fixture
def playbook(alice, host, source, sent_tasks):
    """A playbook of alice's sandbox (as generated from its diff)."""
    op = services.create_sandbox(alice.user, source_vm_name="debian-base")
    return store_playbook(op.sandbox_id)


@pytest.fixture
def inventory(olga):
    private, public = keypair()
    response = olga.post(
        "/v1/inventories",
        {
            "name": "prod",
            "variables": {"db_password": "hunter2"},
            "hosts": [
                {
                    "name": "web-1",
                    "address": "127.0.0.1",
                    "port": 2222,
                    "host_key": public,
                    "private_key": private,
                    "variables": {"api_token": "tok-123"},
                }
            ],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["inventory"]
