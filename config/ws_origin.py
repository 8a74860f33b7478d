"""The websocket Origin check, ahead of authentication and routing.

A browser attaches its cookies to a websocket handshake to any site, and the same-origin
policy does not stop a page from opening one: without this check a page on another origin
(another site, or another port of this machine) could drive an operator's logged-in session
(cross-site websocket hijacking). Browsers always send `Origin` on a websocket handshake, so:

* an `Origin` must equal the server's own origin, compared as (scheme, host, port): either one
  of VSB_ALLOWED_ORIGINS, or, when that is empty, the origin the request itself names (its
  `Host` header with http for ws and https for wss). Channels' AllowedHostsOriginValidator
  compared the host only, so any port or scheme of an allowed host passed;
* the `Host` must be one of ALLOWED_HOSTS, as for HTTP requests. Otherwise a page on a
  rebinding domain (evil.example resolving to 127.0.0.1) would pass the comparison above
  with an origin and a Host that agree;
* no `Origin` at all is a non-browser client (the SDK, curl, websocket libraries): it carries
  no ambient cookies of a browser, so it authenticates with its own API key or not at all,
  and the consumers authorise it like any other caller.

Refused handshakes are closed with 4403 before accept (daphne answers the HTTP upgrade 403)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

DENIED = 4403
DEFAULT_PORTS = {"http": 80, "https": 443}
PAGE_SCHEME = {"ws": "http", "wss": "https"}

Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """(scheme, host, port) of a serialised origin, or None for anything else ("null", a
    path, credentials, an unknown scheme, a bad port)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def origin_allowed(scope) -> bool:
    host = _header(scope, b"host")
    if not host or not validate_host(split_domain_port(host)[0], settings.ALLOWED_HOSTS):
        return False
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    got = parse_origin(origin)
    if got is None:
        return False
    if settings.VSB_ALLOWED_ORIGINS:
        return got in {parse_origin(o) for o in settings.VSB_ALLOWED_ORIGINS}
    scheme = PAGE_SCHEME.get(scope.get("scheme", "ws"), "")
    return got == parse_origin(f"{scheme}://{host}")


class OriginValidator:
    """ASGI middleware for the websocket router: refuses what `origin_allowed` refuses."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": DENIED})
            return
        return await self.application(scope, receive, send)
