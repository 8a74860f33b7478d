"""Keyset ("cursor") pagination for every list of the API.

A list is ordered by a stable total order: one or more columns that never change once a row
exists, the last of them unique (`("created_at", "id")`, `("seq",)`). A page answers
`{count, next, previous, results}`; `next` and `previous` are full URLs carrying an opaque
`cursor`: the position (the ordering values of the page's last, or first, row) signed with
the project's secret, so a client cannot forge one and a damaged one is a 400 naming `cursor`.

Why not limit/offset: while rows are added (or leave a filter, as a decided approval leaves
`status=pending`), an offset counts rows that moved, so a client paging with it skips or
repeats some. A keyset page starts after the last row the client saw, whatever happened
before it: a row that existed when paging began is seen exactly once, and a row added behind
the client's position in the order shows up on a later page (oldest-first lists) or is
newer than the first page (newest-first lists, to be read again from the start). `offset`
is therefore refused (400 naming `offset`), except `offset=0`, which is the first page.

`count` is the number of rows that match the filters at the time of the answer (one COUNT,
as before); it may change from page to page while the list grows.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from django.core import signing
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from rest_framework.pagination import BasePagination
from rest_framework.response import Response

from core.errors import InvalidInput

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CURSOR_HELP = (
    "An opaque position: take it from a page's `next` or `previous` URL (do not build it); "
    "the other query parameters (filters, `limit`) are yours to repeat."
)


def _describe(ordering: Sequence[str]) -> str:
    fields = ", ".join(name.lstrip("-") for name in ordering)
    way = "newest first" if ordering[0].startswith("-") else "oldest first"
    return f"{way}, by ({fields})"


class CursorPagination(BasePagination):
    """Keyset pagination over `ordering` (`-` for descending). Use `ordered_by(...)` to make
    the class for one list; `paginate_queryset` orders the queryset itself."""

    ordering: tuple[str, ...] = ("created_at", "id")
    default_limit = DEFAULT_LIMIT
    max_limit = MAX_LIMIT

    @classmethod
    def ordered_by(cls, *ordering: str) -> type[CursorPagination]:
        """The pagination class of a list in this order, e.g. `ordered_by("-created_at", "-id")`."""
        name = "CursorPagination_" + "_".join(f.replace("-", "desc_") for f in ordering)
        return type(name, (cls,), {"ordering": tuple(ordering)})

    # --- the page --------------------------------------------------------------------------

    def paginate_queryset(self, queryset: QuerySet, request, view=None) -> list:
        self.request = request
        self.model = queryset.model
        self.limit = self._limit(request)
        _refuse_offset(request)
        position, backwards = self._cursor(request)
        self.count = queryset.count()
        order = self.ordering if not backwards else tuple(_flip(f) for f in self.ordering)
        rows = queryset.order_by(*order)
        if position is not None:
            rows = rows.filter(_after(order, position))
        rows = list(rows[: self.limit + 1])
        more = len(rows) > self.limit
        rows = rows[: self.limit]
        if backwards:
            rows.reverse()
        first, last = (self._position(rows[0]), self._position(rows[-1])) if rows else (None, None)
        # Forwards: a next page if a row was left over; a previous one if we came from a
        # position (the rows before it). Backwards the other way round.
        if not backwards:
            self.next_cursor = self._encode(last, False) if more else None
            self.previous_cursor = (
                self._encode(first, True) if position is not None and rows else None
            )
        else:
            self.next_cursor = self._encode(last, False) if rows else None
            self.previous_cursor = self._encode(first, True) if more else None
        return rows

    def get_paginated_response(self, data) -> Response:
        return Response(
            {
                "count": self.count,
                "next": self._link(self.next_cursor),
                "previous": self._link(self.previous_cursor),
                "results": data,
            }
        )

    # --- the cursor ------------------------------------------------------------------------

    def _salt(self) -> str:
        return cursor_salt(self.model, self.ordering)

    def _position(self, row) -> list[Any]:
        return [_jsonable(getattr(row, name.lstrip("-"))) for name in self.ordering]

    def _encode(self, position: list[Any] | None, backwards: bool) -> str | None:
        if position is None:
            return None
        return signing.dumps({"p": position, "b": backwards}, salt=self._salt(), compress=True)

    def _cursor(self, request) -> tuple[list[Any] | None, bool]:
        raw = request.query_params.get("cursor")
        if raw in (None, ""):
            return None, False
        try:
            payload = signing.loads(raw, salt=self._salt())
        except signing.BadSignature:
            raise InvalidInput.field(
                "cursor", "not a cursor of this list: follow the `next` or `previous` URL"
            ) from None
        values = payload.get("p") if isinstance(payload, dict) else None
        if not isinstance(values, list) or len(values) != len(self.ordering):
            raise InvalidInput.field("cursor", "not a cursor of this list")
        try:
            position = [
                self.model._meta.get_field(name.lstrip("-")).to_python(value)
                for name, value in zip(self.ordering, values, strict=True)
            ]
        except (ValidationError, TypeError, ValueError):
            raise InvalidInput.field("cursor", "not a cursor of this list") from None
        return position, bool(payload.get("b"))

    def _limit(self, request) -> int:
        raw = request.query_params.get("limit")
        if raw in (None, ""):
            return self.default_limit
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= self.max_limit:
            raise InvalidInput.field("limit", f"must be an integer from 1 to {self.max_limit}")
        return limit

    def _link(self, cursor: str | None) -> str | None:
        if cursor is None:
            return None
        params = [
            (key, value)
            for key, values in self.request.query_params.lists()
            if key not in ("cursor", "offset")
            for value in values
        ]
        params.append(("cursor", cursor))
        return self.request.build_absolute_uri(self.request.path) + "?" + urlencode(params)

    # --- the schema (drf-spectacular) ------------------------------------------------------

    def get_schema_operation_parameters(self, view) -> list[dict]:
        return [
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": f"{CURSOR_HELP} Rows come {_describe(self.ordering)}.",
                "schema": {"type": "string"},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"Rows per page (default {self.default_limit}).",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_limit},
            },
            {
                "name": "offset",
                "in": "query",
                "required": False,
                "deprecated": True,
                "description": (
                    "Refused unless 0: offsets skip or repeat rows while the list changes. "
                    "Follow `next` (a `cursor`) instead."
                ),
                "schema": {"type": "integer", "minimum": 0, "maximum": 0},
            },
        ]

    def get_paginated_response_schema(self, schema: dict) -> dict:
        return {
            "type": "object",
            "required": ["count", "next", "previous", "results"],
            "properties": {
                "count": {
                    "type": "integer",
                    "description": "Rows matching the filters at the time of this answer.",
                },
                "next": {"type": "string", "format": "uri", "nullable": True},
                "previous": {"type": "string", "format": "uri", "nullable": True},
                "results": schema,
            },
        }


def cursor_salt(model, ordering: Sequence[str]) -> str:
    """What a list's cursors are signed for: its model and order, so that a cursor of one list
    is refused by another."""
    return f"vsb.cursor:{model._meta.label_lower}:{','.join(ordering)}"


def _refuse_offset(request) -> None:
    raw = request.query_params.get("offset")
    if raw in (None, "", "0"):
        return
    raise InvalidInput.field(
        "offset",
        "offset paging skips or repeats rows while the list changes: follow `next` "
        "(the `cursor` parameter) instead",
    )


def _flip(name: str) -> str:
    return name[1:] if name.startswith("-") else f"-{name}"


def _after(ordering: Sequence[str], position: Sequence[Any]) -> Q:
    """Rows strictly after `position` in `ordering`: (a > x) or (a = x and b > y) or ...,
    with `<` for descending columns."""
    terms = []
    for i, name in enumerate(ordering):
        field = name.lstrip("-")
        lookup = "lt" if name.startswith("-") else "gt"
        ties = {f.lstrip("-"): v for f, v in zip(ordering[:i], position[:i], strict=True)}
        terms.append(Q(**ties, **{f"{field}__{lookup}": position[i]}))
    return functools.reduce(operator.or_, terms)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, int | str):
        return value
    return str(value)  # UUIDs
