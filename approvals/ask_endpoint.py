"""POST /api/v1/human/ask as a bare ASGI application, routed ahead of Django.

Django would give each request its own executor thread for its sync parts (request signals,
middleware), which a waiting ask would keep for minutes. Here a waiting ask is one parked
coroutine plus a channel-layer subscription: hundreds of them cost a few MB (bench/approvals.py).
It authenticates, validates and answers exactly like the DRF endpoints (same error shape), and
stops waiting when the client goes away."""

from __future__ import annotations

import asyncio
import json
import logging

from channels.db import database_sync_to_async

from accounts.services import authenticate_api_key
from accounts.ws_auth import api_key_from_headers
from audit.context import RequestContext, current
from audit.middleware import request_id_from
from core.api.errors import error_body, validation_error_body
from core.errors import ServiceError, http_status

from .api.serializers import AskSerializer
from .asking import ask

log = logging.getLogger(__name__)
MAX_BODY = 256 * 1024


@database_sync_to_async
def _authenticate(secret: str):
    return authenticate_api_key(secret)


async def _respond(send, status: int, body: dict, request_id: str, extra: list | None = None):
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _read_body(receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return b"\0too-large"
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


async def blocking_ask_app(scope, receive, send):
    request_id = request_id_from(_header(scope, b"x-request-id"))
    client = scope.get("client") or (None, None)
    token = current.set(RequestContext(request_id=request_id, source_ip=client[0]))
    try:
        await _handle(scope, receive, send, request_id)
    finally:
        current.reset(token)


async def _handle(scope, receive, send, request_id: str):
    if scope["method"] != "POST":
        await _respond(
            send,
            405,
            error_body("method_not_allowed", f'Method "{scope["method"]}" not allowed.'),
            request_id,
            [(b"allow", b"POST")],
        )
        return
    raw = await _read_body(receive)
    if raw is None:
        return
    if raw == b"\0too-large":
        await _respond(
            send, 413, error_body("too_large", f"Body over {MAX_BODY} bytes."), request_id
        )
        return
    secret = api_key_from_headers(scope.get("headers", []))
    user = await _authenticate(secret) if secret else None
    if user is None:
        message = (
            "Invalid, revoked or unknown API key."
            if secret
            else "Authentication credentials were not provided."
        )
        await _respond(
            send,
            401,
            error_body("not_authenticated" if not secret else "authentication_failed", message),
            request_id,
            [(b"www-authenticate", b'Bearer realm="api"')],
        )
        return
    try:
        data = json.loads(raw or b"{}")
    except ValueError as err:
        await _respond(
            send, 400, error_body("parse_error", f"JSON parse error - {err}"), request_id
        )
        return
    serializer = AskSerializer(data=data)
    if not serializer.is_valid():
        await _respond(send, 400, validation_error_body(serializer.errors), request_id)
        return
    fields = dict(serializer.validated_data)
    fields["idempotency_key"] = (
        fields["idempotency_key"] or _header(scope, b"idempotency-key")[:200]
    )
    waiting = asyncio.ensure_future(ask(user, fields))
    gone = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            # The client hung up: stop waiting. The request stays pending; a retry with the
            # same idempotency key picks it up.
            waiting.cancel()
            return
        body = waiting.result()
    except ServiceError as err:
        await _respond(
            send, http_status(err), error_body(err.code, err.message, err.fields), request_id
        )
        return
    finally:
        gone.cancel()
    await _respond(send, 200, body, request_id)
