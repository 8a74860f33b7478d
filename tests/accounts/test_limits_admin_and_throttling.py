"""An operator sets a key's quotas in the admin, and the API throttles requests per key
(README "Limits")."""

from __future__ import annotations

import pytest

from accounts.models import ApiKey
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db

NO_LIMITS = {
    "max_sandboxes": "",
    "max_memory_mb": "",
    "max_snapshots_per_sandbox": "",
    "max_concurrent_commands": "",
    "default_ttl_seconds": "",
}


def test_an_operator_edits_a_keys_quota_in_the_admin_and_the_next_request_obeys_it(
    operator_client, alice, host, source, sent_tasks
):
    key = ApiKey.objects.get(user=alice.user)
    page = operator_client.get(f"/admin/accounts/apikey/{key.pk}/change/")
    assert b'name="max_sandboxes"' in page.content and b"Quotas" in page.content
    response = operator_client.post(
        f"/admin/accounts/apikey/{key.pk}/change/",
        {"name": "test", **NO_LIMITS, "max_sandboxes": "1", "default_ttl_seconds": "0"},
    )
    assert response.status_code == 302, response.content
    key.refresh_from_db()
    assert (key.max_sandboxes, key.default_ttl_seconds, key.max_memory_mb) == (1, 0, None)
    event = AuditEvent.objects.get(verb="apikey.limits_changed")
    assert event.actor == "user:oscar"
    assert event.data["changed"] == {"max_sandboxes": [None, 1], "default_ttl_seconds": [None, 0]}

    body = {"source_vm_name": "debian-base"}
    assert alice.post("/v1/sandboxes", body, format="json").status_code == 202
    refused = alice.post("/v1/sandboxes", body, format="json")
    assert refused.status_code == 409
    assert "max_sandboxes = 1, set on key 'test'" in refused.json()["error"]["message"]


def test_an_operator_issues_a_key_with_its_quotas(operator_client, django_user_model):
    agent = django_user_model.objects.create_user("agent-q")
    response = operator_client.post(
        "/admin/accounts/apikey/add/",
        {"user": agent.pk, "name": "ci", **NO_LIMITS, "max_memory_mb": "2048"},
    )
    assert response.status_code == 302, response.content
    key = ApiKey.objects.get(user=agent)
    assert (key.name, key.max_memory_mb, key.max_sandboxes) == ("ci", 2048, None)


def test_the_admin_refuses_a_negative_quota(operator_client, alice):
    key = ApiKey.objects.get(user=alice.user)
    response = operator_client.post(
        f"/admin/accounts/apikey/{key.pk}/change/",
        {"name": "test", **NO_LIMITS, "max_sandboxes": "-1"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert response.context["adminform"].form.errors["max_sandboxes"]
    key.refresh_from_db()
    assert key.max_sandboxes is None


# --- throttling -----------------------------------------------------------------------------


@pytest.fixture
def rate(settings):
    """Set the per-key rate (the test settings keep it out of the suite's way)."""

    def set_rate(value: str) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"agent": value},
        }

    return set_rate


def test_past_its_rate_a_key_gets_429_in_the_error_shape_with_retry_after(alice, bob, rate):
    rate("3/min")
    for _ in range(3):
        assert alice.get("/v1/sandboxes").status_code == 200
    response = alice.get("/v1/sandboxes")
    assert response.status_code == 429
    assert response.json() == {
        "error": {
            "code": "throttled",
            "message": "requests: 3 of 3 in the last 60 s for key 'test' "
            "(rate VSB_THROTTLE_AGENT=3/min). "
            f"Expected available in {response['Retry-After']} seconds.",
            "fields": {},
        }
    }
    assert 50 <= int(response["Retry-After"]) <= 60
    # Per key, not per address: the other agent, from the same address, is not held up.
    assert bob.get("/v1/sandboxes").status_code == 200


def test_each_key_of_an_agent_has_its_own_bucket_and_sessions_count_per_user(alice, olivia, rate):
    from accounts import services as accounts

    rate("1/min")
    assert alice.get("/v1/sandboxes").status_code == 200
    assert alice.get("/v1/sandboxes").status_code == 429
    _, second = accounts.create_api_key(alice.user, "second")
    alice.credentials(HTTP_AUTHORIZATION=f"Bearer {second}")
    assert alice.get("/v1/sandboxes").status_code == 200
    assert olivia.get("/v1/sandboxes").status_code == 200
    assert olivia.get("/v1/sandboxes").status_code == 429


def test_requests_pass_when_the_throttle_cache_is_down(alice, rate, settings):
    from tests.support.stack import free_port

    rate("1/min")
    settings.CACHES = {
        **settings.CACHES,
        "throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        },
    }
    assert [alice.get("/v1/sandboxes").status_code for _ in range(3)] == [200, 200, 200]


def test_rates_come_from_the_environment_and_off_means_none(monkeypatch):
    from config.settings.base import throttle_rate

    monkeypatch.setenv("VSB_THROTTLE_AGENT", "20/sec")
    assert throttle_rate("AGENT", "600/min") == "20/sec"
    monkeypatch.setenv("VSB_THROTTLE_AGENT", "off")
    assert throttle_rate("AGENT", "600/min") is None
    monkeypatch.delenv("VSB_THROTTLE_AGENT")
    assert throttle_rate("AGENT", "600/min") == "600/min"
