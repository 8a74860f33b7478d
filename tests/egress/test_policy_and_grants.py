"""A sandbox's egress policy, egress requests and grants, and the connection log, through
the API and the services the proxy calls (the proxy itself: test_proxy.py; real guests:
tests/e2e/test_egress.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from egress import services
from egress.models import EgressConnection, EgressRule
from egress.proxy import ConnectionRecord
from sandboxes.models import Sandbox
from tests.approvals.conftest import operator_fixture

pytestmark = pytest.mark.django_db

dora = operator_fixture("dora", "An operator: she decides approvals and names any egress rule.")


@pytest.fixture(autouse=True)
def host_mirrors(monkeypatch):
    """The KVM host's apt sources name one made-up mirror (read through core.hostapt)."""
    monkeypatch.setattr(services.hostapt, "mirror_hosts", lambda: [("mirror.example", 80)])
    monkeypatch.setattr(services, "_mirrors", (0.0, []))


@pytest.fixture
def sandbox(alice, host, source, sent_tasks) -> Sandbox:
    body = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json").json()
    return Sandbox.objects.get(pk=body["sandbox"]["id"])


def ask(client, sandbox, **body):
    return client.post(f"/v1/sandboxes/{sandbox.pk}/egress/requests", body, format="json")


def test_every_sandbox_may_reach_the_hosts_apt_mirrors_and_nothing_else(sandbox):
    assert services.check(str(sandbox.pk), "mirror.example", 80) == services.Verdict(
        True, "host apt mirror mirror.example:80"
    )
    assert not services.check(str(sandbox.pk), "mirror.example", 443).allowed
    assert services.check(str(sandbox.pk), "pypi.org", 443).rule == "not in policy"


def test_the_settings_add_defaults_and_can_switch_egress_off(sandbox, settings):
    settings.VSB = {**settings.VSB, "EGRESS_ALLOW": ["*.pythonhosted.org:443"]}
    assert services.check(str(sandbox.pk), "files.pythonhosted.org", 443).allowed
    settings.VSB = {**settings.VSB, "EGRESS_ENABLED": False}
    assert not services.check(str(sandbox.pk), "mirror.example", 80).allowed


def test_the_policy_route_shows_each_rule_its_source_and_what_no_rule_opens(alice, bob, sandbox):
    body = alice.get(f"/v1/sandboxes/{sandbox.pk}/egress").json()
    assert body["enabled"] is True and body["proxy"] == "http://10.0.2.100:3128"
    assert body["rules"] == [
        {
            "rule": "mirror.example:80",
            "source": "host apt mirror",
            "expires_at": None,
            "approval_id": None,
        }
    ]
    assert any(d.startswith("169.254.0.0/16") for d in body["always_denied"])
    assert bob.get(f"/v1/sandboxes/{sandbox.pk}/egress").status_code == 404


def test_an_agent_names_only_self_service_entries_at_create(
    alice, host, source, sent_tasks, settings
):
    response = alice.post(
        "/v1/sandboxes",
        {"source_vm_name": "debian-base", "egress_allow": ["pypi.org:443"]},
        format="json",
    )
    assert response.status_code == 403, response.content
    assert "egress_allow" in response.json()["error"]["fields"]
    assert not Sandbox.objects.exists()  # refused before anything was made

    settings.VSB = {
        **settings.VSB,
        "EGRESS_SELF_SERVICE": ["*.pythonhosted.org:443", "pypi.org:443"],
    }
    response = alice.post(
        "/v1/sandboxes",
        {"source_vm_name": "debian-base", "egress_allow": ["pypi.org", "files.pythonhosted.org"]},
        format="json",
    )
    assert response.status_code == 202, response.content
    sandbox_id = response.json()["sandbox"]["id"]
    assert services.check(sandbox_id, "files.pythonhosted.org", 443).rule == (
        "create files.pythonhosted.org:443"
    )
    assert AuditEvent.objects.filter(verb="egress.rules_set", sandbox_id=sandbox_id).exists()


def test_an_operator_names_any_entry_at_create(dora, host, source, sent_tasks):
    response = dora.post(
        "/v1/sandboxes",
        {"source_vm_name": "debian-base", "egress_allow": ["registry.example:5000"]},
        format="json",
    )
    assert response.status_code == 202, response.content
    assert services.check(response.json()["sandbox"]["id"], "registry.example", 5000).allowed


@pytest.mark.parametrize(
    "body, field",
    [
        ({"host": "not a host"}, "host"),
        ({"host": "x.example", "port": 0}, "port"),
        ({"host": "x.example", "ttl_seconds": 0}, "ttl_seconds"),
        ({"host": "x.example", "ttl_seconds": 10**9}, "ttl_seconds"),
        ({"host": "127.0.0.1", "port": 80}, "host"),
        ({"host": "169.254.169.254", "port": 80}, "host"),
        ({"host": "x.example", "color": "red"}, "color"),
    ],
)
def test_a_bad_egress_request_is_a_400_naming_the_field(alice, sandbox, body, field):
    response = ask(alice, sandbox, **body)
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not EgressRule.objects.exists()


def test_a_request_for_what_is_allowed_answers_at_once(alice, sandbox):
    response = ask(alice, sandbox, host="mirror.example", port=80)
    assert response.status_code == 200
    assert response.json() == {
        "allowed": True,
        "rule": "host apt mirror mirror.example:80",
        "approval": None,
    }


def test_an_approved_request_is_a_grant_until_its_ttl(alice, dora, sandbox):
    response = ask(alice, sandbox, host="PyPI.org", reason="pip install requests", ttl_seconds=60)
    assert response.status_code == 202, response.content
    approval = response.json()["approval"]
    assert approval["action_type"] == "egress_grant" and approval["status"] == "pending"
    assert approval["payload"] == {
        "sandbox_id": str(sandbox.pk),
        "host": "pypi.org",
        "port": 443,
        "ttl_seconds": 60,
    }
    assert not services.check(str(sandbox.pk), "pypi.org", 443).allowed

    decided = dora.post(f"/v1/approvals/{approval['id']}/approve", {}, format="json")
    assert decided.status_code == 200, decided.content
    assert services.check(str(sandbox.pk), "pypi.org", 443).rule == "grant pypi.org:443"
    grant = EgressRule.objects.get(approval_id=approval["id"])
    assert grant.reason == "pip install requests" and grant.created_by == "dora"
    assert timedelta(seconds=59) < grant.expires_at - timezone.now() <= timedelta(seconds=60)
    assert AuditEvent.objects.filter(verb="egress.granted", sandbox_id=sandbox.pk).exists()
    assert AuditEvent.objects.filter(verb="egress.requested", sandbox_id=sandbox.pk).exists()

    EgressRule.objects.filter(pk=grant.pk).update(expires_at=timezone.now())
    assert not services.check(str(sandbox.pk), "pypi.org", 443).allowed


def test_asking_again_before_a_decision_is_the_same_request(alice, sandbox):
    first = ask(alice, sandbox, host="pypi.org", reason="pip").json()["approval"]
    again = ask(alice, sandbox, host="PYPI.org", port=443).json()["approval"]
    other = ask(alice, sandbox, host="pypi.org", port=8443).json()["approval"]
    assert again["id"] == first["id"] and other["id"] != first["id"]


def test_a_denied_request_grants_nothing(alice, dora, sandbox):
    approval = ask(alice, sandbox, host="pypi.org").json()["approval"]
    assert dora.post(f"/v1/approvals/{approval['id']}/deny", {}, format="json").status_code == 200
    assert not EgressRule.objects.exists()
    assert not services.check(str(sandbox.pk), "pypi.org", 443).allowed


def record(sandbox, **fields) -> ConnectionRecord:
    values = dict(
        sandbox_id=str(sandbox.pk),
        host="pypi.org",
        port=443,
        allowed=False,
        rule="not in policy",
        started_at=datetime.now(UTC),
    )
    values.update(fields)
    return ConnectionRecord(**values)


def test_every_connection_is_logged_and_a_denial_audited_once_a_minute(alice, sandbox):
    services.record_connection(record(sandbox))
    services.record_connection(record(sandbox))
    services.record_connection(
        record(
            sandbox,
            host="mirror.example",
            port=80,
            allowed=True,
            rule="host apt mirror mirror.example:80",
            bytes_down=1234,
            duration_ms=40,
        )
    )
    assert EgressConnection.objects.count() == 3
    assert AuditEvent.objects.filter(verb="egress.denied").count() == 1

    log = alice.get(f"/v1/sandboxes/{sandbox.pk}/egress/log").json()
    assert log["count"] == 3 and log["results"][0]["host"] == "mirror.example"
    assert log["results"][0]["bytes_down"] == 1234
    denied = alice.get(f"/v1/sandboxes/{sandbox.pk}/egress/log?allowed=false").json()
    assert denied["count"] == 2 and {r["rule"] for r in denied["results"]} == {"not in policy"}


def test_a_record_for_an_unknown_sandbox_is_dropped_without_stopping_the_proxy(sandbox):
    services.record_connection(record(sandbox, sandbox_id="00000000-0000-0000-0000-000000000000"))
    assert not EgressConnection.objects.exists()


def test_the_default_settings_exempt_nothing_from_the_always_denied_set(settings):
    """The tests' loopback server is reachable only because the test settings say so: the
    settings a server runs on (a fresh process, no VSB_* in its environment) exempt nothing,
    and the proxy's guard then denies that very address and port as loopback."""
    from egress.addresses import AddressGuard

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSB_", "DJANGO_"))}
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "from config.settings import base; print(base.VSB['EGRESS_EXEMPT'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=settings.BASE_DIR,
    ).stdout
    assert shown.strip() == "[]"
    port = settings.EGRESS_TEST_SERVER_PORT
    assert settings.VSB["EGRESS_EXEMPT"] == [f"127.0.0.1:{port}", f"[::1]:{port}"]
    assert AddressGuard().denial("127.0.0.1", port) == "loopback"
    assert AddressGuard(exempt=[("127.0.0.1", port)]).denial("127.0.0.1", port) is None


def test_operators_read_the_log_and_the_grants_in_the_admin_and_change_nothing(
    django_user_model, alice, dora, sandbox
):
    client = Client()  # (this folder's `client` fixture is the proxy's)
    services.record_connection(record(sandbox, host="denied.example", rule="not in policy"))
    approval = ask(alice, sandbox, host="pypi.org").json()["approval"]
    dora.post(f"/v1/approvals/{approval['id']}/approve", {}, format="json")
    client.force_login(django_user_model.objects.create_superuser("oscar", "o@example.com", "pw"))
    page = client.get("/admin/egress/egressconnection/?allowed__exact=0")
    assert page.status_code == 200 and b"denied.example" in page.content
    page = client.get("/admin/egress/egressrule/")
    assert page.status_code == 200 and b"pypi.org" in page.content
    assert client.get("/admin/egress/egressrule/add/").status_code == 403


def test_a_replay_replica_gets_the_rules_its_origin_has_now(alice, dora, sandbox):
    approval = ask(alice, sandbox, host="pypi.org", reason="pip").json()["approval"]
    dora.post(f"/v1/approvals/{approval['id']}/approve", {}, format="json")
    replica_id = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json")
    replica = Sandbox.objects.get(pk=replica_id.json()["sandbox"]["id"])
    services.copy_rules(sandbox, replica, alice.user)
    assert services.check(str(replica.pk), "pypi.org", 443).rule == "grant pypi.org:443"
    copied = EgressRule.objects.get(sandbox=replica)
    assert copied.expires_at == EgressRule.objects.get(sandbox=sandbox).expires_at
    event = AuditEvent.objects.get(verb="egress.rules_copied")
    assert event.data == {"from": str(sandbox.pk), "rules": ["pypi.org:443"]}
