"""Websocket authentication for agents: the same API key as the REST API, in the handshake's
`Authorization: Bearer vsb_...` (or `X-API-Key`) header. Browser sessions keep working
through Channels' AuthMiddlewareStack, which runs first."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware


def api_key_from_headers(headers) -> str:
    """The API key of raw ASGI headers (Authorization: Bearer, or X-API-Key), or ''."""
    for name, value in headers:
        if name == b"authorization":
            parts = value.decode("latin-1").split()
            if len(parts) == 2 and parts[0].lower() in ("bearer", "token"):
                return parts[1]
        elif name == b"x-api-key":
            return value.decode("latin-1").strip()
    return ""


@database_sync_to_async
def _user_for(secret: str):
    from . import services as accounts

    return accounts.authenticate_api_key(secret)


class ApiKeyAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        if user is None or not user.is_authenticated:
            secret = api_key_from_headers(scope.get("headers", []))
            if secret:
                found = await _user_for(secret)
                if found is not None:
                    scope = dict(scope, user=found, auth="api_key")
        return await super().__call__(scope, receive, send)
