"""Every list of the API pages by keyset (`cursor`): each row once, in the list's documented
order, also when timestamps tie and while rows are added; filters ride along in `next`; a
bad cursor, an offset or a bad limit is a 400 naming the parameter."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import signing
from django.utils import timezone

from approvals import services as approvals
from approvals.models import ApprovalRequest
from audit import services as audit
from audit.models import AuditEvent
from core.api.pagination import cursor_salt
from egress.models import EgressConnection
from sandboxes.models import Command, Operation, Sandbox, Snapshot

pytestmark = pytest.mark.django_db


@dataclass
class Ctx:
    client: object
    user: object
    host: object
    source: object
    sandbox: Sandbox


@dataclass
class Listing:
    """One list of the API: its URL, how a test adds a row to it (`tag` picks whether the
    row matches `matching`, a filter of that list), its model, order and row key."""

    name: str
    url: Callable[[Ctx], str]
    add: Callable[[Ctx, bool], object]
    model: type
    ordering: tuple[str, ...]
    key: str = "id"
    base: str = ""  # query that keeps only the test's own rows
    matching: str = ""  # a filter: rows added with tag=True match it
    also_listed: Callable[[Ctx], list] = lambda ctx: []  # rows the fixture made

    @property
    def newest_first(self) -> bool:
        return self.ordering[0].startswith("-")

    @property
    def time_field(self) -> str:
        return self.ordering[0].lstrip("-")


def add_sandbox(ctx: Ctx, tag: bool) -> Sandbox:
    return Sandbox.objects.create(
        name=f"sb-{uuid.uuid4().hex[:12]}",
        agent_id="tagged" if tag else "other",
        owner=ctx.user,
        host=ctx.host,
        source=ctx.source,
    )


def add_operation(ctx: Ctx, tag: bool) -> Operation:
    return Operation.objects.create(
        kind="stop" if tag else "start",
        sandbox=ctx.sandbox,
        host=ctx.host,
        queue=ctx.host.queue_name,
        requested_by=ctx.user,
    )


def add_command(ctx: Ctx, tag: bool) -> Command:
    return Command.objects.create(sandbox=ctx.sandbox, command="true", timeout_seconds=10)


def add_snapshot(ctx: Ctx, tag: bool) -> Snapshot:
    return Snapshot.objects.create(sandbox=ctx.sandbox, name=f"s{uuid.uuid4().hex[:8]}")


def add_approval(ctx: Ctx, tag: bool) -> ApprovalRequest:
    req, _ = approvals.create_request(ctx.user, prompt="May I?", action_type="destructive")
    if not tag:
        ApprovalRequest.objects.filter(pk=req.pk).update(status="cancelled")
    return req


def add_event(ctx: Ctx, tag: bool) -> AuditEvent:
    return audit.record("paging.tagged" if tag else "paging.other", user=ctx.user)


def add_connection(ctx: Ctx, tag: bool) -> EgressConnection:
    return EgressConnection.objects.create(
        sandbox=ctx.sandbox,
        host="mirror.example",
        port=443,
        allowed=not tag,
        rule="not in policy" if tag else "test",
        started_at=timezone.now(),
    )


LISTS = [
    Listing(
        "sandboxes",
        lambda ctx: "/v1/sandboxes",
        add_sandbox,
        Sandbox,
        ("-created_at", "-id"),
        matching="agent_id=tagged",
        also_listed=lambda ctx: [ctx.sandbox],
    ),
    Listing(
        "operations",
        lambda ctx: "/v1/operations",
        add_operation,
        Operation,
        ("-created_at", "-id"),
        matching="kind=stop",
    ),
    Listing(
        "commands",
        lambda ctx: f"/v1/sandboxes/{ctx.sandbox.pk}/commands",
        add_command,
        Command,
        ("started_at", "id"),
    ),
    Listing(
        "snapshots",
        lambda ctx: f"/v1/sandboxes/{ctx.sandbox.pk}/snapshots",
        add_snapshot,
        Snapshot,
        ("created_at", "id"),
    ),
    Listing(
        "approvals",
        lambda ctx: "/v1/approvals",
        add_approval,
        ApprovalRequest,
        ("created_at", "id"),
        matching="status=pending",
    ),
    Listing(
        "audit",
        lambda ctx: "/v1/audit",
        add_event,
        AuditEvent,
        ("seq",),
        key="seq",
        base="verb=paging",
        matching="verb=paging.tagged",
    ),
    Listing(
        "egress log",
        lambda ctx: f"/v1/sandboxes/{ctx.sandbox.pk}/egress/log",
        add_connection,
        EgressConnection,
        ("-started_at", "-id"),
        matching="allowed=false",
    ),
]
WITH_FILTERS = [listing for listing in LISTS if listing.matching]


@pytest.fixture
def ctx(alice, host, source) -> Ctx:
    sandbox = Sandbox.objects.create(
        name="paging-home", agent_id="home", owner=alice.user, host=host, source=source
    )
    return Ctx(alice, alice.user, host, source, sandbox)


def url_of(listing: Listing, ctx: Ctx, *queries: str) -> str:
    query = "&".join(q for q in (listing.base, *queries) if q)
    return listing.url(ctx) + (f"?{query}" if query else "")


def own_rows(listing: Listing, ctx: Ctx, rows: list) -> list:
    """`rows` as the list answers them: their keys in the list's order."""
    rows = list(listing.model.objects.filter(pk__in=[row.pk for row in rows]))  # as stored now
    fields = [name.lstrip("-") for name in listing.ordering]
    ordered = sorted(rows, key=lambda row: [getattr(row, f) for f in fields])
    if listing.newest_first:
        ordered.reverse()
    return [str(getattr(row, listing.key)) for row in ordered]


def walk(client, url: str, link: str = "next") -> list[dict]:
    """Every page from `url` on, following `link`."""
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        pages.append(response.json())
        url = pages[-1][link]
    return pages


def keys(listing: Listing, pages: list[dict]) -> list[str]:
    return [str(row[listing.key]) for page in pages for row in page["results"]]


def cursor_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["cursor"][0]


def tie(listing: Listing, rows: list) -> None:
    """Give every row the same timestamp: the order then rests on the id alone."""
    if listing.key == "seq":
        return  # the audit list orders by seq alone, unique by construction
    at = timezone.now() - timedelta(minutes=5)
    listing.model.objects.filter(pk__in=[r.pk for r in rows]).update(**{listing.time_field: at})


@pytest.mark.parametrize("listing", LISTS, ids=lambda listing: listing.name)
def test_it_pages_each_row_once_in_the_lists_order_even_when_timestamps_tie(listing, ctx):
    rows = [listing.add(ctx, True) for _ in range(7)]
    tie(listing, rows[:5])
    expected = own_rows(listing, ctx, rows + listing.also_listed(ctx))
    pages = walk(ctx.client, url_of(listing, ctx, "limit=3"))
    assert keys(listing, pages) == expected
    assert [len(p["results"]) for p in pages] == [3, 3, len(expected) - 6]
    assert {p["count"] for p in pages} == {len(expected)}
    assert pages[0]["previous"] is None and pages[-1]["next"] is None
    # And back from the last page by `previous`: the same pages, the other way round.
    back = walk(ctx.client, pages[-1]["previous"], link="previous")
    assert [keys(listing, [p]) for p in back] == [keys(listing, [p]) for p in pages[-2::-1]]


@pytest.mark.parametrize("listing", LISTS, ids=lambda listing: listing.name)
def test_rows_added_while_paging_neither_shift_nor_repeat_the_rows_already_there(listing, ctx):
    before = [listing.add(ctx, True) for _ in range(5)]
    first = ctx.client.get(url_of(listing, ctx, "limit=2")).json()
    added = [listing.add(ctx, True) for _ in range(3)]
    pages = [first, *walk(ctx.client, first["next"])]
    seen = keys(listing, pages)
    assert len(seen) == len(set(seen)), "a row was seen twice"
    before += listing.also_listed(ctx)
    old = set(own_rows(listing, ctx, before))
    new = set(own_rows(listing, ctx, before + added)) - old
    assert old <= set(seen), "a row that existed when paging began was skipped"
    if listing.newest_first:
        # The new rows are ahead of the position: read from the start again to see them.
        assert not new & set(seen)
    else:
        # The new rows come after the position reached: a client paging forward sees them.
        assert new <= set(seen)


@pytest.mark.parametrize("listing", WITH_FILTERS, ids=lambda listing: listing.name)
def test_filters_ride_along_with_the_cursor(listing, ctx):
    rows = [listing.add(ctx, i % 2 == 0) for i in range(9)]
    tie(listing, rows)
    tagged = [row for i, row in enumerate(rows) if i % 2 == 0]
    pages = walk(ctx.client, f"{listing.url(ctx)}?{listing.matching}&limit=2")
    assert keys(listing, pages) == own_rows(listing, ctx, tagged)
    assert {p["count"] for p in pages} == {len(tagged)}
    name, value = listing.matching.split("=")
    for page in pages[:-1]:
        assert parse_qs(urlsplit(page["next"]).query)[name] == [value]
        assert parse_qs(urlsplit(page["next"]).query)["limit"] == ["2"]


def assert_refused(response, field: str) -> None:
    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "invalid", body
    assert list(body["error"]["fields"]) == [field], body


@pytest.mark.parametrize("listing", LISTS, ids=lambda listing: listing.name)
def test_a_bad_cursor_is_a_400_naming_cursor(listing, ctx):
    for _ in range(3):
        listing.add(ctx, True)
    url = url_of(listing, ctx, "limit=1")
    good = cursor_of(ctx.client.get(url).json()["next"])
    signed = signing.dumps  # a cursor signed as ours, for checks past the signature
    salt = cursor_salt(listing.model, listing.ordering)
    bad = {
        "not a cursor": "garbage",
        "a tampered cursor": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "another list's cursor": signed({"p": ["2026-01-01T00:00:00+00:00"]}, salt="vsb.cursor:x"),
        "a position of the wrong length": signed({"p": []}, salt=salt),
        "a position of the wrong type": signed({"p": ["x"] * len(listing.ordering)}, salt=salt),
        "not a position at all": signed(["x"], salt=salt),
    }
    for why, cursor in bad.items():
        response = ctx.client.get(url, {"cursor": cursor})
        assert response.status_code == 400, (why, response.content)
        assert_refused(response, "cursor")
    assert ctx.client.get(url, {"cursor": good}).status_code == 200


@pytest.mark.parametrize("listing", LISTS, ids=lambda listing: listing.name)
def test_offset_paging_is_refused_and_points_to_the_cursor(listing, ctx):
    listing.add(ctx, True)
    url = url_of(listing, ctx)
    response = ctx.client.get(url, {"offset": "1"})
    assert_refused(response, "offset")
    assert "cursor" in response.json()["error"]["message"]
    # offset=0 is the first page, which an old client may still send.
    assert ctx.client.get(url, {"offset": "0"}).status_code == 200


@pytest.mark.parametrize("limit", ["0", "-1", "501", "ten"])
def test_a_limit_out_of_range_is_a_400_naming_limit(ctx, limit):
    assert_refused(ctx.client.get("/v1/approvals", {"limit": limit}), "limit")


def test_the_pending_queue_comes_oldest_first(ctx):
    first, second = (add_approval(ctx, True) for _ in range(2))
    listed = ctx.client.get("/v1/approvals?status=pending").json()["results"]
    assert [r["id"] for r in listed] == [str(first.pk), str(second.pk)]


def test_a_cursor_is_a_position_not_a_licence_to_see_another_agents_rows(ctx, bob):
    for _ in range(2):
        add_approval(ctx, True)
    cursor = cursor_of(ctx.client.get("/v1/approvals?limit=1").json()["next"])
    # bob follows alice's link: he gets his own rows after that position (none).
    body = bob.get("/v1/approvals", {"limit": 1, "cursor": cursor}).json()
    assert body["results"] == [] and body["count"] == 0
