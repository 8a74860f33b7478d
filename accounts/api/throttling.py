"""Request throttling per API key (README "Limits"): one agent's busy loop cannot take the
API from the others. Keyed by the key (never the client address: agents share hosts and
NATs), by the user for a browser session; anonymous calls are refused before throttling."""

from __future__ import annotations

import logging

from django.core.cache import caches
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from ..models import ApiKey

log = logging.getLogger(__name__)


class ApiKeyRateThrottle(SimpleRateThrottle):
    """`VSB_THROTTLE_AGENT` requests (e.g. "600/min") per API key, all endpoints together.
    Past it: 429 `throttled` in the one error shape, with Retry-After. Counted in the
    "throttle" cache (Redis, shared by every web process); if that cache fails the request
    passes (a Redis hiccup must not take the API down with it)."""

    scope = "agent"

    def __init__(self):
        self.cache = caches["throttle"]
        super().__init__()

    def get_rate(self) -> str | None:
        # Read at each request, not once at import as DRF does: settings may change (tests).
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view) -> str | None:
        if isinstance(request.auth, ApiKey):
            return self.cache_format % {"scope": self.scope, "ident": f"key-{request.auth.prefix}"}
        if request.user and request.user.is_authenticated:
            return self.cache_format % {"scope": self.scope, "ident": f"user-{request.user.pk}"}
        return None

    def allow_request(self, request, view) -> bool:
        try:
            allowed = super().allow_request(request, view)
        except Exception as exc:  # noqa: BLE001 - the cache is down: let the request through
            # One line, no traceback: during a Redis outage this logs every request.
            log.warning("throttle cache unavailable, request not counted: %s", exc)
            return True
        if not allowed:
            wait = self.wait()
            who = (
                f"key {request.auth.name or request.auth.prefix!r}"
                if isinstance(request.auth, ApiKey)
                else f"user {request.user.get_username()!r}"
            )
            raise exceptions.Throttled(
                wait,
                detail=(
                    f"requests: {len(self.history)} of {self.num_requests} in the last "
                    f"{self.duration} s for {who} (rate VSB_THROTTLE_AGENT={self.rate})."
                ),
            )
        return True
