"""Project middleware.

WhiteNoise, made async-capable: Django runs a sync-only middleware in its one thread-sensitive executor thread; under ASGI
that thread would then sit inside every async view (the blocking approval ask) for as long
as it waits, serialising them all. Static files are looked up in memory, so the async path
only hops to a thread to serve a hit.

JSON errors for the API: whatever answers an error on a /v1 or /api path (DRF, Django's URL
resolver, a crash, a bare ASGI app) answers it in the API's one shape, never as HTML."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import JsonResponse
from django.utils.decorators import sync_and_async_middleware
from whitenoise.middleware import WhiteNoiseMiddleware

log = logging.getLogger(__name__)


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, **kwargs):
        super().__init__(get_response, **kwargs)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request):
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


# --- JSON errors for the API --------------------------------------------------------------
API_PREFIXES = ("/v1/", "/api/")
_CODES = {400: "bad_request", 403: "permission_denied", 500: "server_error"}
_MESSAGES = {404: "Not found.", 500: "Internal server error."}
# Of the replaced response: everything but its body's description.
_BODY_HEADERS = {"content-type", "content-length", "content-disposition", "content-encoding"}


def is_api_path(path: str) -> bool:
    return path in ("/v1", "/api") or path.startswith(API_PREFIXES)


def error_response_body(status: int, method: str) -> dict:
    """The API's error shape for a bare HTTP status: a code and message, never a detail."""
    from core.api.errors import error_body

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code = _CODES.get(status, phrase.lower().replace(" ", "_").replace("-", "_"))
    if status == 405:
        message = f'Method "{method}" not allowed.'
    else:
        message = _MESSAGES.get(status, f"{phrase}.")
    return error_body(code, message)


def _as_json_error(request, response):
    if (
        response.status_code < 400
        or not is_api_path(request.path_info)
        or response.get("Content-Type", "").startswith("application/json")
    ):
        return response
    replaced = JsonResponse(
        error_response_body(response.status_code, request.method), status=response.status_code
    )
    for name, value in response.items():
        if name.lower() not in _BODY_HEADERS:
            replaced[name] = value
    replaced.cookies = response.cookies
    response.close()
    return replaced


@sync_and_async_middleware
def api_json_errors(get_response):
    """Errors of /v1 and /api paths in the API's one JSON shape, with DEBUG on or off: the URL
    resolver's 404, Django's 405, an unhandled exception's 500 (Django has already logged
    it), a bad Host's 400. DRF's own errors are JSON already and pass through. Other paths
    (admin, pages) keep Django's HTML."""
    if iscoroutinefunction(get_response):

        async def middleware(request):
            return _as_json_error(request, await get_response(request))

    else:

        def middleware(request):
            return _as_json_error(request, get_response(request))

    return middleware


def api_crash_guard(app):
    """For the bare ASGI apps on API paths (the blocking ask): an exception before the
    response started is logged and answered with the JSON 500, not daphne's HTML page."""

    async def guarded(scope, receive, send):
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracking_send)
        except Exception as exc:
            from core.api import errors

            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            status, error, headers = 500, error_response_body(500, scope.get("method", "")), []
            if errors.is_database_unavailable(exc):
                status, error = 503, errors.database_unavailable_body()
                headers = [(b"retry-after", str(errors.DATABASE_RETRY_AFTER_SECONDS).encode())]
            body = json.dumps(error).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *headers,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

    return guarded
