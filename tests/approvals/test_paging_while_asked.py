"""An operator pages the pending queue through a real daphne server while 1,000 asks arrive
from other threads: every ask that was pending when paging began is on exactly one page, no
ask is on two, and the asks that arrive meanwhile come after. Offset paging, which skipped
asks here before, is refused; the SDK's iter_approvals follows the pages to the end.

Of the arriving asks, some come over HTTP through the same server (the real create path);
the rest are inserted in small batches from a thread, because 1,000 full creates (each an
audit event under the chain's lock and an announcement) take about 45 s on the test machine,
and what is tested here is the reading side under a growing table."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.utils import timezone
from virsh_sandbox import VirshSandbox

from accounts import services as accounts
from approvals.models import ApprovalRequest
from tests.support import stack

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

ALREADY_WAITING = 300
ARRIVING = 1000
OVER_HTTP = 50
BATCH = 10


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    stack.flush_test_redis()
    with django_db_blocker.unblock():
        agent, _ = User.objects.get_or_create(username="paging-agent")
        operator, _ = User.objects.get_or_create(username="paging-operator")
        operator.user_permissions.add(Permission.objects.get(codename="view_approvalrequest"))
        keys = {u.username: accounts.create_api_key(u, "paging")[1] for u in (agent, operator)}
        insert_asks(agent, "waiting", ALREADY_WAITING)
    port = stack.free_port()
    web = stack.daphne(port)
    web.start()
    try:
        base = f"http://127.0.0.1:{port}"
        stack.wait_for_http(f"{base}/v1/health", web)
        yield base, stack.Api(base, keys["paging-agent"]), stack.Api(base, keys["paging-operator"])
    finally:
        web.stop()
        with django_db_blocker.unblock():
            from django.core.management import call_command

            call_command("flush", interactive=False, verbosity=0)


def insert_asks(user, prompt: str, count: int) -> list[str]:
    expires_at = timezone.now() + timedelta(hours=1)
    made = ApprovalRequest.objects.bulk_create(
        ApprovalRequest(
            requested_by=user,
            prompt=f"{prompt} {n}",
            action_type="destructive",
            timeout_seconds=3600,
            expires_at=expires_at,
        )
        for n in range(count)
    )
    return [str(req.pk) for req in made]


def get_url(api: stack.Api, url: str) -> dict:
    """GET a full URL as the server wrote it in `next`."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api.key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def pending_ids(django_db_blocker) -> set[str]:
    with django_db_blocker.unblock():
        return {
            str(pk)
            for pk in ApprovalRequest.objects.filter(status="pending").values_list("pk", flat=True)
        }


def test_paging_the_pending_queue_while_1000_asks_arrive_sees_each_ask_once(
    server, django_db_blocker
):
    base, agent, operator = server
    asked: list[str] = []
    failures: list[object] = []
    lock = threading.Lock()
    paging_began = threading.Event()

    def ask_over_http() -> None:
        for n in range(OVER_HTTP):
            status, body = agent.post(
                "/v1/approvals", {"prompt": f"arriving {n}", "action_type": "destructive"}
            )
            with lock:
                (asked.append(body["id"]) if status == 201 else failures.append(body))

    def ask_in_batches() -> None:
        with django_db_blocker.unblock():
            user = User.objects.get(username="paging-agent")
            try:
                for batch in range((ARRIVING - OVER_HTTP) // BATCH):
                    made = insert_asks(user, "arriving", BATCH)
                    with lock:
                        asked.extend(made)
                    if batch == 1:  # most arrive once the operator has begun paging
                        paging_began.wait(timeout=60)
                    time.sleep(0.005)
            finally:
                connection.close()

    askers = [threading.Thread(target=ask_over_http), threading.Thread(target=ask_in_batches)]
    for thread in askers:
        thread.start()
    try:
        while len(asked) < 20 and not failures:  # the asks are arriving before paging begins
            time.sleep(0.01)
        existing = pending_ids(django_db_blocker)
        paging_began.set()
        seen: list[str] = []
        created_at: list[str] = []
        url, pages = f"{base}/v1/approvals?status=pending&limit=20", 0
        while url:
            page = get_url(operator, url)
            seen += [row["id"] for row in page["results"]]
            created_at += [row["created_at"] for row in page["results"]]
            assert page["next"] is None or page["next"].startswith(f"{base}/v1/approvals?")
            url, pages = page["next"], pages + 1
        arrived_while_paging = len(asked)
    finally:
        paging_began.set()
        for thread in askers:
            thread.join(timeout=120)
    assert not failures, failures[:3]
    assert len(asked) == ARRIVING
    assert len(seen) == len(set(seen)), "an ask was on two pages"
    missed = existing - set(seen)
    assert not missed, f"{len(missed)} asks pending when paging began were on no page"
    assert len(existing) >= ALREADY_WAITING + 20
    # Oldest first: the pages read the queue in order, and the asks that arrived while the
    # operator paged came after the position reached, so most of them were seen too.
    assert created_at == sorted(created_at)
    assert set(seen) - existing <= set(asked)
    assert arrived_while_paging > len(existing) - ALREADY_WAITING, "nothing arrived meanwhile"
    print(
        f"\n{pages} pages, {len(seen)} asks seen: {len(existing)} pending at the start, all seen"
        f" once; {len(set(seen) - existing)} of the {ARRIVING} arriving ones seen as well"
    )


def test_offset_paging_is_refused_on_the_real_stack(server):
    _, _, operator = server
    status, body = operator.get("/v1/approvals?status=pending&limit=50&offset=50")
    assert status == 400, body
    assert body["error"]["fields"] == {
        "offset": [
            "offset paging skips or repeats rows while the list changes: follow `next` "
            "(the `cursor` parameter) instead"
        ]
    }
    status, body = operator.get("/v1/approvals?status=pending&limit=50&offset=0")
    assert status == 200 and len(body["results"]) == 50 and body["next"], body


def test_the_sdk_follows_the_servers_pages_to_the_end(server, django_db_blocker):
    base, _, operator = server
    pending = pending_ids(django_db_blocker)
    with VirshSandbox(base, api_key=operator.key) as client:
        seen = [ask.id for ask in client.approvals.iter_approvals(status="pending", limit=200)]
        first = client.approvals.list_approvals(status="pending", limit=200)
    assert len(seen) == len(set(seen)) and set(seen) == pending
    assert first.total == len(pending) and first.next_cursor
