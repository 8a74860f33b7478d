"""Per-request audit context, and one audit event for every state-changing API call.

Async-capable on purpose: a sync-only middleware would make every async view (the blocking
approval ask) hold a thread for as long as it waits."""

from __future__ import annotations

import logging
import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from .context import RequestContext, current

log = logging.getLogger(__name__)

SAFE_METHODS = {"GET", "HEAD", "OPTIONS", "TRACE"}
AUDITED_PREFIXES = ("/v1/", "/api/v1/")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_from(given: str) -> str:
    """The client's X-Request-ID when it is sane, else a new one."""
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def request_id_of(request) -> str:
    return request_id_from(request.headers.get("X-Request-ID", ""))


def _should_audit(request) -> bool:
    return request.method not in SAFE_METHODS and request.path.startswith(AUDITED_PREFIXES)


def _record_call(request, response) -> None:
    from django.db import InterfaceError, OperationalError

    try:
        _record(request, response)
    except (OperationalError, InterfaceError):
        if response.status_code < 400:
            raise  # it did something, and its record cannot be written: not a quiet success
        # Refused (a 503 while the database restarts, a 401...): nothing was done, and the
        # refusal itself stays the caller's answer instead of turning into a 500.
        log.error(
            "api.call %s %s (%s) not recorded: the database is not answering",
            request.method,
            request.path,
            response.status_code,
        )


def _record(request, response) -> None:
    from . import services

    user = getattr(request, "user", None)
    services.record(
        "api.call",
        user=user if user is not None and user.is_authenticated else None,
        actor=None if user is not None and user.is_authenticated else "anonymous",
        target_type="http",
        target_id=request.path[:100],
        data={"method": request.method, "path": request.path, "status": response.status_code},
    )


class AuditMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _enter(self, request):
        ctx = RequestContext(
            request_id=request_id_of(request), source_ip=request.META.get("REMOTE_ADDR")
        )
        request.request_id = ctx.request_id
        return current.set(ctx)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        token = self._enter(request)
        try:
            response = self.get_response(request)
            if _should_audit(request):
                _record_call(request, response)
            response["X-Request-ID"] = request.request_id
            return response
        finally:
            current.reset(token)

    async def __acall__(self, request):
        token = self._enter(request)
        try:
            response = await self.get_response(request)
            if _should_audit(request):
                await sync_to_async(_record_call)(request, response)
            response["X-Request-ID"] = request.request_id
            return response
        finally:
            current.reset(token)
