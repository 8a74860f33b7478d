"""The SDK and the server's keyset pages: list methods read a page (new `{count, next,
previous, results}`, the original's `{sandboxes, total}` and a bare list alike) and take a
`cursor`; the `iter_*` twins follow `next` through every page with the same filters; the
snapshot list gathers all its pages. Against httpx.MockTransport playing the server."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx
import pytest
from virsh_sandbox import AsyncVirshSandbox, VirshSandbox, errors

from tests.sdk.fakes import sandbox_json

SB = sandbox_json()["id"]
BASE = "http://sandbox.test"


class PagedServer:
    """Serves `rows` at `route` in pages of the request's `limit`, the cursor being the index
    of the next row (opaque to the client), and records each request's query."""

    def __init__(self, route: str, rows: list[dict]):
        self.route, self.rows = route, rows
        self.queries: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == self.route, request.url
        query = dict(request.url.params)
        self.queries.append(query)
        start, limit = int(query.get("cursor", "0")), int(query.get("limit", "2"))
        end = start + limit
        rest = {k: v for k, v in query.items() if k != "cursor"}
        more = end < len(self.rows)
        return httpx.Response(
            200,
            json={
                "count": len(self.rows),
                "next": f"{BASE}{self.route}?{urlencode({**rest, 'cursor': end})}"
                if more
                else None,
                "previous": None,
                "results": self.rows[start:end],
            },
        )


def client(handler) -> VirshSandbox:
    return VirshSandbox(BASE, api_key="vsb_test", backoff=0, transport=httpx.MockTransport(handler))


# Each iter_* twin: its sub-client, positional arguments, a filter, the route it pages and
# the rows there.
TWINS = {
    "iter_sandboxes": ("sandbox", (), {"state": "ready"}, "/v1/sandboxes", sandbox_json),
    "iter_operations": ("operations", (), {"kind": "create"}, "/v1/operations", None),
    "iter_sandbox_commands": ("sandbox", (SB,), {}, f"/v1/sandboxes/{SB}/commands", None),
    "iter_approvals": ("approvals", (), {"status": "pending"}, "/v1/approvals", None),
    "iter_events": ("audit", (), {"verb": "sandbox"}, "/v1/audit", lambda n: {"seq": n}),
    "iter_egress_log": (
        "sandbox",
        (SB,),
        {"allowed": False},
        f"/v1/sandboxes/{SB}/egress/log",
        None,
    ),
}


def row_id(row) -> object:
    return getattr(row, "id", None) or row.seq


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_each_iter_twin_follows_next_through_every_page_with_its_filters(twin):
    sub, args, filters, route, make = TWINS[twin]
    rows = [(make or (lambda n: {"id": f"row-{n}"}))(f"{n}") for n in range(1, 6)]
    server = PagedServer(route, rows)
    iterate = getattr(getattr(client(server), sub), twin)
    seen = [row_id(row) for row in iterate(*args, **filters, limit=2)]
    assert seen == [row.get("id") or row["seq"] for row in rows]
    query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in filters.items()}
    query["limit"] = "2"
    assert server.queries == [query, {**query, "cursor": "2"}, {**query, "cursor": "4"}]


def test_a_page_gives_the_cursor_of_the_next_and_the_list_method_takes_it():
    server = PagedServer("/v1/approvals", [{"id": f"ask-{n}"} for n in range(3)])
    api = client(server).approvals
    first = api.list_approvals(status="pending", limit=2)
    assert (first.total, [a.id for a in first.approvals]) == (3, ["ask-0", "ask-1"])
    assert first.next_cursor == "2" and first.previous_cursor is None
    second = api.list_approvals(status="pending", limit=2, cursor=first.next_cursor)
    assert [a.id for a in second.approvals] == ["ask-2"] and second.next_cursor is None
    assert server.queries[1] == {"status": "pending", "limit": "2", "cursor": "2"}


@pytest.mark.parametrize(
    "body",
    [
        {"sandboxes": [sandbox_json()], "total": 1},  # the original's shape
        [sandbox_json()],  # a bare list
        {"count": 1, "next": f"{BASE}/v1/sandboxes?offset=50", "results": [sandbox_json()]},
    ],
    ids=["original", "bare list", "offset links"],
)
def test_old_answers_still_read_as_one_last_page(body):
    api = client(lambda request: httpx.Response(200, json=body)).sandbox
    listing = api.list_sandboxes()
    assert (listing.total, [s.id for s in listing.sandboxes]) == (1, [SB])
    assert listing.next_cursor is None
    assert [s.id for s in api.iter_sandboxes()] == [SB]


def test_the_snapshot_list_gathers_every_page():
    route = f"/v1/sandboxes/{SB}/snapshots"
    server = PagedServer(route, [{"name": f"s{n}"} for n in range(5)])
    assert [s.name for s in client(server).sandbox.list_snapshots(SB)] == [
        f"s{n}" for n in range(5)
    ]
    assert [q.get("cursor") for q in server.queries] == [None, "2", "4"]
    bare = client(lambda request: httpx.Response(200, json=[{"name": "old"}]))
    assert [s.name for s in bare.sandbox.list_snapshots(SB)] == ["old"]


def test_the_async_client_iterates_the_same_way():
    server = PagedServer("/v1/approvals", [{"id": f"ask-{n}"} for n in range(5)])

    async def read() -> list[str]:
        async with AsyncVirshSandbox(
            BASE, api_key="vsb_test", transport=httpx.MockTransport(server)
        ) as c:
            return [a.id async for a in c.approvals.iter_approvals(limit=2)]

    assert asyncio.run(read()) == [f"ask-{n}" for n in range(5)]
    assert len(server.queries) == 3


def test_a_refused_cursor_is_a_validation_error_naming_it():
    refusal = {
        "error": {
            "code": "invalid",
            "message": "cursor: not a cursor of this list",
            "fields": {"cursor": ["not a cursor of this list"]},
        }
    }
    api = client(lambda request: httpx.Response(400, json=refusal)).audit
    with pytest.raises(errors.ValidationError) as refused:
        api.list_events(cursor="forged")
    assert refused.value.fields == {"cursor": ["not a cursor of this list"]}


def test_an_iter_twin_takes_no_offset():
    with pytest.raises(TypeError):
        list(client(PagedServer("/v1/sandboxes", [])).sandbox.iter_sandboxes(offset=10))
