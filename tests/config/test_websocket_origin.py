"""The websocket Origin check of the real ASGI app (config/ws_origin.py): a browser page may
open a socket only to its own origin, compared as scheme, host and port; a client sending no
Origin (the SDK, scripts) is let through to authenticate with its API key. Refusals close
with 4403 before the consumer runs. An operator's socket (/ws/approvals/) is the target: a
hijacked one would stream every approval request to the attacker's page."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator

from config.asgi import application
from tests.approvals.conftest import make_operator
from tests.support import stack

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def operator(django_user_model):
    stack.flush_test_redis()
    return make_operator(django_user_model, "oscar")


def handshake(operator, host: str | None, origin: str | None, scheme: str = "ws"):
    """(connected, close code) of a handshake carrying these headers and the operator's key."""
    headers = [(b"authorization", f"Bearer {operator.secret}".encode())]
    if host is not None:
        headers.append((b"host", host.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))

    async def connect():
        ws = WebsocketCommunicator(application, "/ws/approvals/", headers=headers)
        ws.scope["scheme"] = scheme
        result = await ws.connect()
        await ws.disconnect()
        return result

    return asyncio.run(connect())


def test_a_page_of_the_servers_own_origin_connects(operator):
    for host, origin, scheme in [
        ("127.0.0.1:8080", "http://127.0.0.1:8080", "ws"),
        ("localhost:8080", "http://LOCALHOST:8080", "ws"),
        ("127.0.0.1", "http://127.0.0.1", "ws"),
        ("127.0.0.1", "http://127.0.0.1:80", "ws"),
        ("127.0.0.1:8443", "https://127.0.0.1:8443", "wss"),
        ("[::1]:8080", "http://[::1]:8080", "ws"),
    ]:
        assert handshake(operator, host, origin, scheme) == (True, None), (host, origin, scheme)


def test_a_client_without_origin_connects_with_its_api_key(operator):
    assert handshake(operator, "127.0.0.1:8080", None) == (True, None)


def test_a_page_of_another_origin_is_refused_with_4403(operator):
    for origin, scheme in [
        ("http://127.0.0.1:9999", "ws"),  # another port of the same machine
        ("http://127.0.0.1", "ws"),  # port 80 is not 8080
        ("https://127.0.0.1:8080", "ws"),  # another scheme
        ("http://127.0.0.1:8080", "wss"),  # an http page on a TLS socket
        ("http://evil.example:8080", "ws"),  # another host
        ("http://localhost:8080", "ws"),  # another name of this host is another origin
        ("null", "ws"),  # sandboxed iframes, file: pages
        ("http://127.0.0.1:8080/path", "ws"),
        ("http://user@127.0.0.1:8080", "ws"),
        ("http://127.0.0.1:bad", "ws"),
    ]:
        assert handshake(operator, "127.0.0.1:8080", origin, scheme) == (False, 4403), origin


def test_a_rebinding_domain_is_refused_although_origin_and_host_agree(operator):
    """evil.example resolving to 127.0.0.1: the page's Origin and the Host are both
    evil.example, so only ALLOWED_HOSTS tells it apart."""
    assert handshake(operator, "evil.example:8080", "http://evil.example:8080") == (False, 4403)
    assert handshake(operator, "evil.example:8080", None) == (False, 4403)
    assert handshake(operator, None, "http://127.0.0.1:8080") == (False, 4403)


def test_configured_origins_replace_the_derived_one(operator, settings):
    """Behind a TLS proxy daphne sees ws:// while the page is https://vsb.example."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "vsb.example"]
    settings.VSB_ALLOWED_ORIGINS = ["https://vsb.example"]
    assert handshake(operator, "vsb.example", "https://vsb.example") == (True, None)
    assert handshake(operator, "vsb.example", "https://vsb.example:443") == (True, None)
    assert handshake(operator, "vsb.example", "http://vsb.example") == (False, 4403)
    assert handshake(operator, "vsb.example", "https://vsb.example:8443") == (False, 4403)
