"""Per-agent quotas and the default TTL through the API (README "Limits"): limits set on the
API key (empty: the settings default), usage counted over the agent, a 409 or 429
`quota_exceeded` that names the quota, its limit and the usage. Tasks are recorded, not run;
the race and the concurrent commands through a real worker are in tests/integration."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services as accounts
from accounts.models import ApiKey
from core.errors import QuotaExceeded
from sandboxes import services
from sandboxes.choices import CommandStatus, SandboxState
from sandboxes.models import Command, Sandbox, Snapshot

pytestmark = pytest.mark.django_db


def create(client, **body):
    payload = {"source_vm_name": "debian-base", **body}
    return client.post("/v1/sandboxes", payload, format="json")


def key_of(client) -> ApiKey:
    return ApiKey.objects.get(user=client.user)


def limit(client, **limits) -> ApiKey:
    """Set the quotas of the client's key, as an operator does in the admin."""
    key = key_of(client)
    accounts.update_api_key(key, name=key.name, limits={**_limits(key), **limits})
    return key


def _limits(key: ApiKey) -> dict:
    return {f: getattr(key, f) for f in accounts.LIMIT_FIELDS}


def refusal(response, status: int) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded", error
    return error


# --- live sandboxes and memory -------------------------------------------------------------


def test_it_refuses_a_create_past_the_keys_sandbox_quota_naming_quota_limit_and_usage(
    alice, host, source, sent_tasks
):
    limit(alice, max_sandboxes=2)
    assert create(alice).status_code == 202
    assert create(alice).status_code == 202
    error = refusal(create(alice), 409)
    assert error["message"] == (
        "live sandboxes: 2 of 2 in use (quota max_sandboxes = 2, set on key 'test'); "
        "destroy one first."
    )
    assert Sandbox.objects.filter(owner=alice.user).count() == 2


def test_a_destroyed_sandbox_no_longer_counts(alice, host, source, sent_tasks):
    limit(alice, max_sandboxes=1)
    first = create(alice).json()["sandbox"]["id"]
    refusal(create(alice), 409)
    Sandbox.objects.filter(pk=first).update(state=SandboxState.DESTROYED)
    assert create(alice).status_code == 202


def test_it_refuses_memory_past_the_quota_naming_the_memory_mb_field(
    alice, host, source, sent_tasks
):
    limit(alice, max_memory_mb=1024)
    assert create(alice, memory_mb=768).status_code == 202
    error = refusal(create(alice, memory_mb=512), 409)
    assert error["message"].startswith(
        "memory: 768 of 1024 MiB in use by live sandboxes, 512 more asked "
        "(quota max_memory_mb = 1024, set on key 'test')"
    )
    assert list(error["fields"]) == ["memory_mb"]
    assert create(alice, memory_mb=256).status_code == 202  # what is left still fits


def test_usage_counts_over_all_keys_of_the_agent_but_not_over_other_agents(
    alice, bob, host, source, sent_tasks
):
    limit(alice, max_sandboxes=1)
    _, second_secret = accounts.create_api_key(alice.user, "second", limits={"max_sandboxes": 1})
    assert create(alice).status_code == 202
    alice.credentials(HTTP_AUTHORIZATION=f"Bearer {second_secret}")
    error = refusal(create(alice), 409)
    assert "1 of 1 in use" in error["message"] and "key 'second'" in error["message"]
    assert create(bob).status_code == 202


def test_a_key_without_its_own_limit_gets_the_settings_default(
    alice, host, source, sent_tasks, settings
):
    settings.VSB = {**settings.VSB, "QUOTA_MAX_SANDBOXES": 1}
    assert create(alice).status_code == 202
    error = refusal(create(alice), 409)
    assert "(quota max_sandboxes = 1, the default VSB_QUOTA_MAX_SANDBOXES)" in error["message"]


def test_operators_have_no_quota(olivia, host, source, sent_tasks, settings):
    settings.VSB = {**settings.VSB, "QUOTA_MAX_SANDBOXES": 1, "QUOTA_MAX_MEMORY_MB": 256}
    assert create(olivia).status_code == 202
    assert create(olivia, memory_mb=512).status_code == 202


def test_work_for_an_agent_without_a_key_gets_its_most_generous_live_key(
    alice, host, source, sent_tasks, settings
):
    # A task acting for the agent (a playbook verify's replica) carries no key.
    settings.VSB = {**settings.VSB, "QUOTA_MAX_SANDBOXES": 1}
    limit(alice, max_sandboxes=3)
    accounts.create_api_key(alice.user, "tight", limits={"max_sandboxes": 1})
    for _ in range(3):
        services.create_sandbox(alice.user, source_vm_name="debian-base")
    with pytest.raises(QuotaExceeded, match="3 of 3 in use .*set on key 'test'"):
        services.create_sandbox(alice.user, source_vm_name="debian-base")


# --- snapshots ------------------------------------------------------------------------------


@pytest.fixture
def ready_sandbox(alice, host, source, sent_tasks):
    sandbox_id = create(alice).json()["sandbox"]["id"]
    Sandbox.objects.filter(pk=sandbox_id).update(state=SandboxState.READY)
    return Sandbox.objects.get(pk=sandbox_id)


def test_it_refuses_a_snapshot_past_the_per_sandbox_quota(alice, ready_sandbox):
    limit(alice, max_snapshots_per_sandbox=2)
    url = f"/v1/sandboxes/{ready_sandbox.pk}/snapshots"
    for name in ("one", "two"):
        assert alice.post(url, {"name": name}, format="json").status_code == 202
    error = refusal(alice.post(url, {"name": "three"}, format="json"), 409)
    assert error["message"] == (
        f"snapshots of sandbox {ready_sandbox.name}: 2 of 2 (quota max_snapshots_per_sandbox "
        "= 2, set on key 'test'); delete one first."
    )
    assert not Snapshot.objects.filter(name="three").exists()


def test_the_snapshot_quota_is_per_sandbox(alice, ready_sandbox, host, source, sent_tasks):
    limit(alice, max_snapshots_per_sandbox=1)
    other_id = create(alice).json()["sandbox"]["id"]
    Sandbox.objects.filter(pk=other_id).update(state=SandboxState.READY)
    for sandbox_id in (ready_sandbox.pk, other_id):
        response = alice.post(f"/v1/sandboxes/{sandbox_id}/snapshots", {"name": "a"}, format="json")
        assert response.status_code == 202, response.content


# --- concurrent commands (the real worker's run: tests/integration/test_quotas.py) ---------


def running_command(sandbox: Sandbox, user, started_ago: float = 0) -> Command:
    return Command.objects.create(
        sandbox=sandbox,
        requested_by=user,
        command="sleep 600",
        timeout_seconds=600,
        status=CommandStatus.RUNNING,
        started_at=timezone.now() - timedelta(seconds=started_ago),
    )


def test_it_answers_429_while_the_agents_command_quota_is_running(alice, ready_sandbox):
    limit(alice, max_concurrent_commands=2)
    running_command(ready_sandbox, alice.user)
    running_command(ready_sandbox, alice.user)
    response = alice.post(
        f"/v1/sandboxes/{ready_sandbox.pk}/command", {"command": "true"}, format="json"
    )
    error = refusal(response, 429)
    assert error["message"] == (
        "concurrent commands: 2 of 2 running (quota max_concurrent_commands = 2, set on key "
        "'test'); wait for one to finish."
    )
    assert Command.objects.filter(command="true").count() == 0


def test_a_command_row_left_running_long_past_any_timeout_no_longer_counts(
    alice, ready_sandbox, settings, monkeypatch
):
    # Its worker died; the row must not hold the agent's quota forever.
    limit(alice, max_concurrent_commands=1)
    running_command(ready_sandbox, alice.user, settings.VSB["MAX_COMMAND_TIMEOUT_SECONDS"] + 300)
    monkeypatch.setattr(services.wakeups, "wait", lambda *args: {"status": "finished"})
    response = alice.post(
        f"/v1/sandboxes/{ready_sandbox.pk}/command", {"command": "true"}, format="json"
    )
    assert response.status_code == 200, response.content


# --- default TTL ----------------------------------------------------------------------------


def lifetime(response) -> timedelta | None:
    assert response.status_code == 202, response.content
    sandbox = Sandbox.objects.get(pk=response.json()["sandbox"]["id"])
    return sandbox.expires_at - sandbox.created_at if sandbox.expires_at else None


def about(seconds: int) -> tuple[timedelta, timedelta]:
    return timedelta(seconds=seconds - 5), timedelta(seconds=seconds + 5)


def test_a_sandbox_created_without_a_ttl_gets_the_default_of_a_day(alice, host, source, sent_tasks):
    low, high = about(24 * 3600)
    assert low < lifetime(create(alice)) < high


def test_an_operator_setting_of_0_means_no_default_ttl(alice, host, source, sent_tasks, settings):
    settings.VSB = {**settings.VSB, "DEFAULT_TTL_SECONDS": 0}
    assert lifetime(create(alice)) is None


def test_the_keys_default_ttl_wins_over_the_settings_and_0_on_the_key_means_none(
    alice, host, source, sent_tasks
):
    limit(alice, default_ttl_seconds=600)
    low, high = about(600)
    assert low < lifetime(create(alice)) < high
    limit(alice, default_ttl_seconds=0)
    assert lifetime(create(alice)) is None


def test_an_explicit_ttl_wins_over_every_default(alice, host, source, sent_tasks):
    limit(alice, default_ttl_seconds=600)
    low, high = about(120)
    assert low < lifetime(create(alice, ttl_seconds=120)) < high
