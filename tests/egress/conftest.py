from __future__ import annotations

import pytest

from egress import services
from sandboxes.models import Sandbox
from tests.approvals.conftest import dora  # noqa: F401 (the decider fixture)


@pytest.fixture(autouse=True)
def host_mirrors(monkeypatch):
    """The KVM host's apt sources name one made-up mirror (read through core.hostapt)."""
    monkeypatch.setattr(services.hostapt, "mirror_hosts", lambda: [("mirror.example", 80)])
    monkeypatch.setattr(services, "_mirrors", (0.0, []))


@pytest.fixture
def sandbox(alice, host, source, sent_tasks) -> Sandbox:
    body = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json").json()
    return Sandbox.objects.get(pk=body["sandbox"]["id"])
