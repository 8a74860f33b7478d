"""One error shape for the whole API: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ServiceError, http_status

log = logging.getLogger(__name__)


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            fields.update(_flatten(value, name))
    elif isinstance(detail, list):
        messages = []
        for item in detail:
            if isinstance(item, dict | list):
                fields.update(_flatten(item, prefix))
            else:
                messages.append(str(item))
        if messages:
            fields[prefix or "non_field_errors"] = messages
    else:
        fields[prefix or "non_field_errors"] = [str(detail)]
    return fields


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def validation_error_body(detail) -> dict:
    """A serializer's errors in the one shape, its message naming the first bad field."""
    fields = _flatten(detail)
    first = next(iter(fields.items()), ("", [""]))
    message = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
    return error_body("invalid", message, fields)


# While the database restarts (or its connections are cut), a request is told to come back,
# not shown a 500: nothing was done, and trying again in a few seconds works.
DATABASE_RETRY_AFTER_SECONDS = 5


def is_database_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)


def database_unavailable_body() -> dict:
    return error_body(
        "database_unavailable",
        "The database is not answering (restarting?); nothing was done. "
        f"Try again in {DATABASE_RETRY_AFTER_SECONDS} s.",
    )


def exception_handler(exc, context):
    if is_database_unavailable(exc):
        log.error("the database did not answer: %s", exc, exc_info=exc)
        return Response(
            database_unavailable_body(),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=http_status(exc))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DjangoValidationError):
        # A model field refusing a value the input let through (a malformed id in a query
        # or body): still bad input, a 400 naming it, not a crash.
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        exc = exceptions.ValidationError(detail)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real bug: let Django log it and answer 500
    if isinstance(exc, exceptions.ValidationError):
        response.data = validation_error_body(exc.detail)
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else exc.default_code
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response.data = error_body(code, str(detail))
        if response.status_code == status.HTTP_401_UNAUTHORIZED:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response
