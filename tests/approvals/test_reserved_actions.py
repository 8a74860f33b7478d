"""Actions the server reserves for itself (choices.RESERVED_ACTION_TYPES: applying a playbook
now) cannot be asked for through any public route (issue 11, item 6): an agent that opens
`kind=action, action_type=apply_playbook` with a matching payload behind a misleading prompt
gets 400 naming the field, from every creation route, and no request exists afterwards."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import HttpCommunicator
from django.db import connections

from approvals.models import ApprovalRequest

pytestmark = pytest.mark.django_db

CRAFTED = {
    "prompt": "May I restart nginx on my sandbox? (harmless)",
    "kind": "action",
    "action_type": "apply_playbook",
    "payload": {
        "action": "apply_playbook",
        "playbook_id": "0c6f1a8e-8a41-4a43-8d38-8b1f2c3d4e5f",
        "version": 1,
    },
    "timeout_secs": 60,
}
# The reserved type spelled otherwise, or named only by the payload's "action".
VARIANTS = [
    ({}, "action_type"),
    ({"action_type": " Apply_Playbook "}, "action_type"),
    ({"action_type": "restart_nginx"}, "payload"),
    ({"action_type": "restart_nginx", "payload": {"action": "APPLY_PLAYBOOK"}}, "payload"),
]
ROUTES = ["/v1/approvals", "/api/v1/human/ask-async"]


def test_the_reserved_set_is_declared_in_one_place():
    from approvals.choices import RESERVED_ACTION_TYPES

    assert "apply_playbook" in RESERVED_ACTION_TYPES


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("change", "field"), VARIANTS)
def test_an_agent_cannot_ask_for_a_reserved_action(alice, route, change, field):
    response = alice.post(route, {**CRAFTED, **change}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and list(error["fields"]) == [field]
    assert "reserved" in error["message"]
    assert not ApprovalRequest.objects.exists()


def test_an_operator_cannot_either(dora):
    response = dora.post("/v1/approvals", CRAFTED, format="json")
    assert response.status_code == 400 and "action_type" in response.json()["error"]["fields"]
    assert not ApprovalRequest.objects.exists()


def test_other_actions_are_still_asked_for_and_marked_as_the_callers(alice):
    response = alice.post(
        "/v1/approvals",
        {**CRAFTED, "action_type": "restart_nginx", "payload": {"unit": "nginx"}},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["origin"] == "caller"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_blocking_ask_refuses_a_reserved_action_at_once(alice):
    """/api/v1/human/ask: the bare ASGI endpoint (routed ahead of Django, what daphne serves)
    and the DRF view (what WSGI serves) answer 400 without waiting."""
    from config.asgi import application

    for change, field in VARIANTS:
        response = alice.post("/api/v1/human/ask", {**CRAFTED, **change}, format="json")
        assert response.status_code == 400, response.content
        assert list(response.json()["error"]["fields"]) == [field]

    async def ask(body: dict) -> tuple[int, dict]:
        comm = HttpCommunicator(
            application,
            "POST",
            "/api/v1/human/ask",
            body=json.dumps(body).encode(),
            headers=[
                (b"authorization", f"Bearer {alice.secret}".encode()),
                (b"content-type", b"application/json"),
            ],
        )
        response = await comm.get_response(timeout=10)
        return response["status"], json.loads(response["body"])

    try:
        for change, field in VARIANTS:
            status, body = asyncio.run(ask({**CRAFTED, **change}))
            assert status == 400, body
            assert list(body["error"]["fields"]) == [field]
    finally:  # the endpoint's database thread keeps its connection: let the test database go
        asyncio.run(sync_to_async(connections.close_all)())
    assert not ApprovalRequest.objects.exists()
