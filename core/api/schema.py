"""The OpenAPI side of the one error shape: every operation documents the errors it can answer.

`AutoSchema` (the project's DEFAULT_SCHEMA_CLASS) adds to every operation the error answers
that any route of its kind can give, as `ErrorSerializer`:

- 400 when it takes input (a body, or query parameters): malformed or invalid input;
- 415 when it takes a body: a content type it does not parse;
- 401 and 403 unless it is open to anonymous callers (no key; a session without CSRF token);
- 404 when its path names something (an id that names nothing of yours, or no id at all);
- 429 when the view throttles its callers (its throttle classes, from the settings or its
  own, with a rate);
- 503 always: the database is not answering (restarting), `database_unavailable`, with
  `Retry-After`.

An action documents the errors of its own (409 a wrong state, 503 no room, 502/504 a failed
or late host step...) with `errors()`: `responses={200: X, **errors(409, 503)}`. An answer an
action documents itself (a 409 with a body of its own) is kept."""

from __future__ import annotations

from drf_spectacular import openapi
from drf_spectacular.plumbing import is_list_serializer
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import AllowAny

from .serializers import ErrorSerializer

# What each status means, for the schema's description of the answer.
ERROR_STATUSES = {
    400: "Invalid input: `fields` names what is wrong.",
    401: "No API key, or not a valid one.",
    403: "Not allowed to do this.",
    404: "No such thing, or not yours.",
    409: "In the wrong state for this, or the name is taken.",
    413: "Over a size limit.",
    415: "A content type this route does not take.",
    422: "Well-formed input that cannot be handled.",
    429: "Too many requests, or over a quota: `message` says which.",
    502: "A step on the sandbox's host failed: `message` says why.",
    503: "Not now (no worker with room, or the database is not answering: `code` says "
    "which); nothing was done. Try again later.",
    504: "No answer in time; the work may still finish.",
}


def errors(*statuses: int) -> dict[int, type[ErrorSerializer]]:
    """The error answers `statuses`, for an @extend_schema's `responses`."""
    unknown = set(statuses) - set(ERROR_STATUSES)
    if unknown:
        raise ValueError(f"no description for error statuses {sorted(unknown)}")
    return dict.fromkeys(statuses, ErrorSerializer)


class AutoSchema(openapi.AutoSchema):
    def _is_list_view(self, serializer=None) -> bool:
        # A plain ViewSet's `list` says what it answers: an array only as `many=True` (the
        # generator would make any answer of a `list` action an array, an object with
        # `results` too).
        if getattr(self.view, "action", None) == "list" and not isinstance(
            self.view, GenericAPIView
        ):
            declared = self.get_response_serializers() if serializer is None else serializer
            if isinstance(declared, dict) and declared:
                declared = declared[min(declared, key=str)]
            return is_list_serializer(declared)
        return super()._is_list_view(serializer)

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in sorted(self.implied_errors()):
            code = str(status)
            if code not in responses:
                responses[code] = self._get_response_for_code(ErrorSerializer, code)
        for code, response in responses.items():
            if int(code) in ERROR_STATUSES and response.get("description") in ("", None):
                response["description"] = ERROR_STATUSES[int(code)]
        return responses

    def implied_errors(self) -> set[int]:
        """The errors any route like this one can answer (see the module's docstring)."""
        found: set[int] = set()
        takes_body = self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer()
        query = [p for p in self._get_parameters() if p.get("in") == "query"]
        if takes_body or query:
            found.add(400)
        if takes_body:
            found.add(415)
        permissions = self.view.get_permissions()
        if not all(isinstance(p, AllowAny) for p in permissions):
            found |= {401, 403}
            # Throttles count callers who are someone; a rate of None (off) counts no one.
            if any(getattr(t, "rate", "set") for t in self.view.get_throttles()):
                found.add(429)
        if "{" in self.path:
            found.add(404)
        found.add(503)  # any route, while the database restarts (core/api/errors.py)
        return found
