"""Personas and shared fixtures. alice and bob are agents who must not see each other's
sandboxes; olivia is an operator (staff); anonymous callers carry no key."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services as accounts
from sandboxes import runtime, services
from sandboxes.choices import SourceKind
from sandboxes.models import SourceVM

RING_ORDER = {"unit": 0, "integration": 1, "e2e": 2}


def pytest_collection_modifyitems(config, items):
    """Fast rings first: unit, then integration (real worker), then e2e (real VMs)."""

    def ring(item) -> int:
        if item.get_closest_marker("e2e"):
            return RING_ORDER["e2e"]
        if item.get_closest_marker("integration"):
            return RING_ORDER["integration"]
        return RING_ORDER["unit"]

    items.sort(key=ring)  # stable: keeps file order within a ring


@pytest.fixture(scope="session", autouse=True)
def _no_stray_processes():
    yield
    from tests.support.stack import kill_all_started

    kill_all_started()


@pytest.fixture(autouse=True)
def _fresh_drivers():
    runtime.reset_drivers()
    yield
    runtime.reset_drivers()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test's event loop gets its own channel layer: a layer made under another test's
    loop keeps that loop's locks ("bound to a different event loop")."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def make_agent(django_user_model, username: str, key_name: str = "test"):
    user = django_user_model.objects.create_user(username=username)
    _, secret = accounts.create_api_key(user, key_name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.user = user
    client.secret = secret
    return client


def agent_fixture(username: str):
    """A fixture named `username`: that agent's API client."""

    @pytest.fixture(name=username)
    def agent(db, django_user_model):
        """An agent's API client, carrying a fresh API key of theirs."""
        return make_agent(django_user_model, username)

    return agent


alice = agent_fixture("alice")
bob = agent_fixture("bob")


@pytest.fixture
def olivia(db, django_user_model):
    user = django_user_model.objects.create_user(username="olivia", is_staff=True)
    client = APIClient()
    client.force_authenticate(user)
    client.user = user
    return client


@pytest.fixture
def operator_client(client, django_user_model):
    """oscar, a superuser, logged in to the admin (a browser session)."""
    user = django_user_model.objects.create_superuser("oscar", "oscar@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def anonymous():
    return APIClient()


@pytest.fixture
def host(db):
    """This machine's host with a fresh heartbeat, as if its worker were running."""
    h = services.ensure_host()
    h.last_heartbeat = timezone.now()
    h.save(update_fields=["last_heartbeat"])
    return h


@pytest.fixture
def source(db, tmp_path):
    disk = tmp_path / "base.qcow2"
    disk.write_bytes(b"")
    return SourceVM.objects.create(
        name="debian-base",
        kind=SourceKind.IMAGE,
        disk_path=str(disk),
        kernel=str(tmp_path / "vmlinuz"),
        initrd=str(tmp_path / "initrd.img"),
        cmdline="root=/dev/vda rw console=ttyS0",
    )


@pytest.fixture
def sent_tasks(monkeypatch):
    """Records tasks the service layer sends (unit tests only; the integration and e2e
    rings run a real worker)."""
    from config.celery import app

    sent: list[tuple[str, list, str]] = []

    def fake_send_task(name, args=None, queue=None, **kwargs):
        sent.append((name, list(args or []), queue))

    monkeypatch.setattr(app, "send_task", fake_send_task)
    return sent
