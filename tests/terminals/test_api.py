"""Scoping, validation and error shapes of the terminal and file APIs, and the websocket's
authorisation, without a worker: everything here is refused or answered before any
operation would reach a host."""

from __future__ import annotations

import asyncio
import json

import pytest

from sandboxes import services as sandbox_services
from tests.terminals.conftest import terminal_socket

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sandbox(alice, host, source, sent_tasks):
    op = sandbox_services.create_sandbox(alice.user, source_vm_name="debian-base")
    return op.sandbox


def test_another_agents_sandbox_is_a_404_everywhere(bob, sandbox):
    base = f"/v1/sandboxes/{sandbox.id}"
    for method, path in (
        ("get", f"{base}/terminals/sessions"),
        ("post", f"{base}/terminals/sessions"),
        ("get", f"{base}/terminals/panes"),
        ("post", f"{base}/terminals/panes/3/send-keys"),
        ("delete", f"{base}/terminals/sessions/main"),
        ("get", f"{base}/files/read?path=/etc/hostname"),
        ("put", f"{base}/files/upload?path=/tmp/x"),
        ("get", f"{base}/files/download?path=/etc/hostname"),
        ("get", f"/api/v1/tmux/sessions?sandbox_id={sandbox.id}"),
    ):
        response = getattr(bob, method)(path, {} if method == "post" else None, format="json")
        assert response.status_code == 404, (method, path, response.content)
        assert response.json()["error"]["code"] == "not_found"


def test_an_anonymous_caller_is_a_401(anonymous, sandbox):
    response = anonymous.post("/api/v1/tmux/panes/send-keys", {"pane_id": "%1", "text": "id"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"


def test_terminals_and_files_need_a_ready_sandbox(alice, sandbox):
    base = f"/v1/sandboxes/{sandbox.id}"
    response = alice.post(f"{base}/terminals/sessions", {"name": "work"}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"
    response = alice.get(f"{base}/files/stat?path=/etc")
    assert response.status_code == 409
    assert alice.get(f"{base}/terminals/sessions").json() == {"sessions": []}


def test_input_is_validated_in_the_house_error_shape(alice, sandbox):
    response = alice.post(
        "/api/v1/tmux/panes/send-keys", {"pane_id": "%1", "txt": "typo"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"txt": ["Unknown field."]}
    response = alice.post(
        "/api/v1/tmux/panes/send-keys",
        {"pane_id": "%1", "keys": ["Enter", "rm -rf /"]},
        format="json",
    )
    assert response.status_code == 400 and "keys" in response.json()["error"]["fields"]
    response = alice.post("/api/v1/tmux/panes/send-keys", {"text": "id"}, format="json")
    assert response.status_code == 400 and "pane_id" in response.json()["error"]["fields"]
    response = alice.post("/api/v1/tmux/panes/read", {"pane_id": "%1"}, format="json")
    assert response.status_code == 404, "no terminal session in any of alice's sandboxes"
    response = alice.post(
        "/api/v1/tmux/sessions/create", {"name": "x", "command": "rm -rf /"}, format="json"
    )
    assert response.status_code == 400 and "command" in response.json()["error"]["fields"]
    response = alice.post(
        f"/v1/sandboxes/{sandbox.id}/files/write",
        {"path": "relative", "content": ""},
        format="json",
    )
    assert response.status_code == 409  # state is checked first; paths are checked in the guest


def test_the_websocket_closes_others_with_4403_and_a_stopped_sandbox_with_4409(alice, bob, sandbox):
    async def scenario():
        for headers in ([(b"authorization", f"Bearer {bob.secret}".encode())], []):
            comm = terminal_socket(sandbox.id, *headers)
            assert (await comm.connect())[0]
            assert await comm.receive_output(5) == {"type": "websocket.close", "code": 4403}
            await comm.wait()
        comm = terminal_socket(sandbox.id, (b"x-api-key", alice.secret.encode()))
        assert (await comm.connect())[0]
        hello = json.loads(await comm.receive_from(5))
        assert hello["type"] == "hello" and hello["role"] == "control"
        error = json.loads(await comm.receive_from(5))
        assert error["type"] == "error" and error["code"] == "invalid_state"
        assert await comm.receive_output(5) == {"type": "websocket.close", "code": 4409}
        await comm.wait()

    asyncio.run(scenario())
