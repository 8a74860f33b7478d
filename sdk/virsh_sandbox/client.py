"""``VirshSandbox`` (synchronous) and ``AsyncVirshSandbox`` (asyncio): the same surface,
one implementation (``_api``), two engines (``_core``)."""

from __future__ import annotations

import re
from typing import Any

from . import errors
from ._api import (
    ApprovalsAPI,
    AuditAPI,
    FilesAPI,
    HealthAPI,
    HostsAPI,
    HumanAPI,
    OperationsAPI,
    PlaybooksAPI,
    SandboxAPI,
    TmuxAPI,
    VMsAPI,
)
from ._core import AsyncEngine, Call, SyncEngine

SCHEMA_ROUTE = "/api/schema/"


def normalize_route(route: str) -> str:
    """``/v1/sandboxes/{id}/command/`` and ``/v1/sandboxes/{sandbox_id}/command`` are the
    same route: placeholders renamed ``{}``, no trailing slash."""
    return re.sub(r"\{[^}]*\}", "{}", route).rstrip("/") or "/"


class _Client:
    _engine_class: Any

    def __init__(
        self,
        host: str | None = None,
        tmux_host: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> None:
        self._engine = self._engine_class(host, tmux_host, api_key, **options)
        self.sandbox = SandboxAPI(self)
        self.sandboxes = self.sandbox
        self.vms = VMsAPI(self)
        self.health = HealthAPI(self)
        self.hosts = HostsAPI(self)
        self.operations = OperationsAPI(self)
        self.files = FilesAPI(self)
        self.human = HumanAPI(self)
        self.approvals = ApprovalsAPI(self)
        self.audit = AuditAPI(self)
        self.playbooks = PlaybooksAPI(self)
        self.tmux = TmuxAPI(self)

    @property
    def base_url(self) -> str:
        return self._engine.base_url

    @property
    def api_key(self) -> str | None:
        return self._engine.api_key

    def _supports(self, method: str, route: str):
        """Generator: whether the server has ``method route``. Reads the server's OpenAPI
        schema once (no side effects, and no confusion with a 404 for a missing object);
        if the schema is not served, asks the route itself with OPTIONS (an unrouted path is
        a 404, a routed one never is)."""
        engine = self._engine
        if engine._routes is None:
            try:
                schema = yield Call("GET", SCHEMA_ROUTE, params={"format": "json"})
            except errors.VirshSandboxError:
                schema = None
            if isinstance(schema, dict) and isinstance(schema.get("paths"), dict):
                engine._routes = {
                    (m.upper(), normalize_route(path))
                    for path, ops in schema["paths"].items()
                    for m in ops
                }
            else:
                engine._routes = set()
                engine._routes_from_schema = False
        if engine._routes_from_schema:
            return (method.upper(), normalize_route(route)) in engine._routes
        probe = re.sub(r"\{[^}]*\}", "00000000-0000-0000-0000-000000000000", route)
        try:
            yield Call("OPTIONS", probe, retry=False)
        except errors.NotFound:
            return False
        except errors.VirshSandboxError:
            return True
        return True


class VirshSandbox(_Client):
    """The synchronous client.

    ``VirshSandbox(host, tmux_host=None, api_key=None)``: ``host`` defaults to
    ``$VIRSH_SANDBOX_URL`` or ``http://localhost:8080``; the API key to
    ``$VIRSH_SANDBOX_API_KEY`` (sent as ``Authorization: Bearer <key>``). ``tmux_host`` is
    accepted for the original SDK's signature and ignored: terminals live on the same server.

    Sub-clients: ``sandbox`` (lifecycle, commands, snapshots, diff), ``operations``,
    ``vms``, ``health``, ``hosts`` (operators), ``files``, ``human`` (approval requests),
    ``approvals``, ``audit``, ``playbooks``, ``tmux``.

    Options: ``timeout`` (seconds per ordinary request), ``wait_timeout`` (for calls the
    server holds open while it waits), ``retries``/``backoff``/``max_backoff`` (transient
    failures, see ``_core.RetryPolicy``), ``headers``, ``transport`` (an httpx transport,
    e.g. ``httpx.MockTransport`` in tests), ``verify`` (TLS).
    """

    _engine_class = SyncEngine

    def supports(self, method: str, route: str) -> bool:
        """Whether the server exposes ``method route`` (e.g. ``"POST",
        "/api/v1/human/ask"``); for features that land on servers at different times."""
        return self._engine.drive(self._supports(method, route))

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> VirshSandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncVirshSandbox(_Client):
    """The asyncio twin of ``VirshSandbox``: same arguments and sub-clients; every method is
    awaited, and ``sandbox.stream_command`` is an async iterator."""

    _engine_class = AsyncEngine

    async def supports(self, method: str, route: str) -> bool:
        return await self._engine.drive(self._supports(method, route))

    async def close(self) -> None:
        await self._engine.close()

    async def __aenter__(self) -> AsyncVirshSandbox:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
