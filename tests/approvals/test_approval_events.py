"""/ws/approvals/ through the real ASGI app and the real Redis channel layer: operators get
new and decided requests live; anonymous callers and agents are refused with 4403."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection

from approvals import services
from config.asgi import application
from tests.support import stack

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def communicator(secret: str | None = None) -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if secret:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    return WebsocketCommunicator(application, "/ws/approvals/", headers=headers)


@pytest.fixture(autouse=True)
def _clean_channel_layer():
    stack.flush_test_redis()


async def refused_code(secret: str | None) -> int:
    ws = communicator(secret)
    connected, code = await ws.connect()
    assert not connected
    await ws.disconnect()
    return code


def test_anonymous_callers_and_agents_are_refused_with_4403(alice):
    assert asyncio.run(refused_code(None)) == 4403
    assert asyncio.run(refused_code(alice.secret)) == 4403
    assert asyncio.run(refused_code("vsb_bad_key")) == 4403


def test_an_operator_receives_new_and_decided_requests_in_order(alice, dora):
    async def scenario():
        ws = communicator(dora.secret)
        connected, _ = await ws.connect()
        assert connected
        req, _ = await database_sync_to_async(services.create_request)(
            alice.user, prompt="May I drop the cache table?", action_type="destructive"
        )
        created = await ws.receive_json_from(timeout=5)
        await database_sync_to_async(services.decide)(dora.user, req.id, approve=True, reason="ok")
        decided = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return req, created, decided

    req, created, decided = asyncio.run(scenario())
    assert created["type"] == "approval.created"
    assert created["request"]["id"] == str(req.id) and created["request"]["status"] == "pending"
    assert decided["type"] == "approval.decided"
    assert decided["request"]["status"] == "approved" and decided["request"]["decided_by"] == "dora"
    assert decided["seq"] > created["seq"]


def test_a_rolled_back_request_sends_no_event(alice, dora):
    from django.db import transaction

    async def scenario():
        ws = communicator(dora.secret)
        assert (await ws.connect())[0]

        def create_then_fail():
            with pytest.raises(RuntimeError), transaction.atomic():
                services.create_request(alice.user, prompt=f"never {uuid.uuid4()}")
                raise RuntimeError("rolled back")

        await database_sync_to_async(create_then_fail)()
        nothing = await ws.receive_nothing(timeout=1)
        await ws.disconnect()
        return nothing

    assert asyncio.run(scenario()) is True


def test_the_webhook_is_signed_and_carries_the_new_request(alice, settings):
    import http.server
    import json

    from approvals import tasks, webhook

    got = {}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            got["headers"] = dict(self.headers)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    settings.APPROVALS = {
        **settings.APPROVALS,
        "WEBHOOK_URL": f"http://127.0.0.1:{server.server_port}/hook",
        "WEBHOOK_SECRET": "s3cret",
    }
    req, _ = services.create_request(alice.user, prompt="Reboot db-1?")
    tasks.send_webhook.run(str(req.id))
    thread.join(5)
    server.server_close()
    connection.close()
    headers = {k.lower(): v for k, v in got["headers"].items()}
    expected = webhook.signature("s3cret", headers["x-vsb-timestamp"], got["body"])
    assert headers["x-vsb-signature"] == expected
    assert headers["x-vsb-event"] == "approval.created"
    assert json.loads(got["body"])["request"]["id"] == str(req.id)
