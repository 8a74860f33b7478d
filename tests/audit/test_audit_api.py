"""GET /v1/audit: filters, pagination, scoping, and a JSON Lines export."""

from __future__ import annotations

import json

import pytest

from audit import services as audit
from sandboxes import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail(alice, bob, host, source, sent_tasks):
    a = services.create_sandbox(alice.user, source_vm_name="debian-base", agent_id="web-agent")
    b = services.create_sandbox(bob.user, source_vm_name="debian-base", agent_id="db-agent")
    audit.record("test.note", actor="system", data={"n": 1})
    return a.sandbox_id, b.sandbox_id


def test_an_operator_filters_by_sandbox_agent_actor_verb_and_time(olivia, trail):
    sandbox_a, _ = trail
    body = olivia.get(f"/v1/audit?sandbox={sandbox_a}").json()
    assert {e["sandbox_id"] for e in body["results"]} == {str(sandbox_a)}
    assert olivia.get("/v1/audit?agent=db-agent").json()["count"] >= 1
    by_actor = olivia.get("/v1/audit?actor=bob").json()["results"]
    assert by_actor and {e["actor"] for e in by_actor} == {"user:bob"}
    by_prefix = olivia.get("/v1/audit?verb=sandbox").json()["results"]
    # Each create, and its admission to a boot slot (queued → requested).
    assert {e["verb"] for e in by_prefix} == {"sandbox.create", "sandbox.transition"}
    assert olivia.get("/v1/audit?since=2999-01-01T00:00:00Z").json()["count"] == 0


def test_it_paginates(olivia, trail):
    page = olivia.get("/v1/audit?limit=2").json()
    assert len(page["results"]) == 2 and page["count"] > 2 and page["next"]
    assert page["results"][0]["seq"] < page["results"][1]["seq"]


def test_an_agent_sees_only_its_own_events(alice, trail):
    seen = alice.get("/v1/audit").json()["results"]
    assert seen
    assert all(e["actor"] == "user:alice" or e["agent"] == "web-agent" for e in seen)
    assert not any(e["agent"] == "db-agent" for e in seen)


def test_it_exports_json_lines(olivia, trail):
    response = olivia.get("/v1/audit/export?verb=sandbox.create")
    assert response["Content-Type"] == "application/x-ndjson"
    lines = b"".join(response.streaming_content).decode().splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 2 and all(e["verb"] == "sandbox.create" for e in events)
    assert all(len(e["hash"]) == 64 for e in events)


def test_an_anonymous_caller_is_refused(anonymous):
    assert anonymous.get("/v1/audit").status_code == 401


def test_a_bad_filter_is_a_400_naming_the_field(olivia):
    response = olivia.get("/v1/audit?since=yesterday")
    assert response.status_code == 400
    assert "since" in response.json()["error"]["fields"]
