"""The blocking ask through a real daphne server: it waits without holding a thread, returns
the decision within a second of it being made, expires distinctly, survives a dropped
connection and a server restart through its idempotency key, and scales to 200 waiters."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Permission, User

from accounts import services as accounts
from tests.support import stack

# django_db: makes pytest-django create the test database; the module shares committed rows
# with the server process and flushes them at the end.
pytestmark = [pytest.mark.integration, pytest.mark.django_db]


@dataclass
class Server:
    web: stack.Proc
    port: int
    agent: stack.Api
    operator: stack.Api
    outsider: stack.Api

    def restart(self) -> None:
        self.web.stop()
        self.web = stack.daphne(self.port)
        self.web.start()
        stack.wait_for_http(f"http://127.0.0.1:{self.port}/v1/health", self.web)


def threads_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    stack.flush_test_redis()
    with django_db_blocker.unblock():
        keys = {}
        for name in ("ask-agent", "ask-operator", "ask-outsider"):
            user, _ = User.objects.get_or_create(username=name, is_staff=name == "ask-outsider")
            keys[name] = accounts.create_api_key(user, "ask")[1]
        User.objects.get(username="ask-operator").user_permissions.add(
            Permission.objects.get(codename="decide_approvalrequest")
        )
    port = stack.free_port()
    web = stack.daphne(port)
    web.start()
    handle = None
    try:
        stack.wait_for_http(f"http://127.0.0.1:{port}/v1/health", web)
        base = f"http://127.0.0.1:{port}"
        handle = Server(
            web,
            port,
            stack.Api(base, keys["ask-agent"]),
            stack.Api(base, keys["ask-operator"]),
            stack.Api(base, keys["ask-outsider"]),
        )
        yield handle
    finally:
        (handle.web if handle else web).stop()
        with django_db_blocker.unblock():
            from django.core.management import call_command

            call_command("flush", interactive=False, verbosity=0)


def pending_id(api: stack.Api, prompt: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = api.get("/api/v1/human/pending")
        assert status == 200, body
        for req in body["pending"]:
            if req["prompt"] == prompt:
                return req["id"]
        time.sleep(0.05)
    raise AssertionError(f"no pending request {prompt!r}")


def test_an_ask_waits_and_returns_the_operators_approval_within_a_second(server):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    asking = pool.submit(
        server.agent.post,
        "/api/v1/human/ask",
        {"prompt": "May I restart nginx?", "action_type": "destructive", "timeout_secs": 60},
    )
    request_id = pending_id(server.operator, "May I restart nginx?")
    time.sleep(1)
    assert not asking.done(), "the ask returned before anyone decided"
    status, decided = server.operator.post(
        f"/v1/approvals/{request_id}/approve", {"reason": "go ahead"}
    )
    decided_at = time.monotonic()
    assert status == 200, decided
    status, answer = asking.result(timeout=5)
    answered_in = time.monotonic() - decided_at
    assert status == 200, answer
    assert answer["status"] == "approved" and answer["approved"] is True
    assert answer["approved_by"] == "ask-operator" and answer["reason"] == "go ahead"
    assert answered_in < 1.0, f"the ask answered {answered_in:.2f} s after the decision"
    again = server.operator.post(f"/v1/approvals/{request_id}/deny", {"reason": "changed my mind"})
    assert again[0] == 409, again


def test_a_timeout_returns_expired_not_denied(server):
    started = time.monotonic()
    status, answer = server.agent.post(
        "/api/v1/human/ask", {"prompt": "Nobody will answer this", "timeout_secs": 2}
    )
    assert status == 200, answer
    assert answer["status"] == "expired" and answer["approved"] is False
    assert answer["decided_by"] is None
    assert 1.9 < time.monotonic() - started < 6


def test_deciding_needs_the_permission_and_agents_never_decide(server):
    status, req = server.agent.post("/api/v1/human/ask-async", {"prompt": "Who may decide?"})
    assert status == 201, req
    status, body = server.outsider.post(f"/v1/approvals/{req['id']}/approve", {})
    assert status == 403 and "permission" in body["error"]["message"]
    status, body = server.agent.post(f"/v1/approvals/{req['id']}/approve", {})
    assert status == 403, body


def test_bad_input_and_missing_credentials_get_4xx_from_the_blocking_endpoint(server):
    status, body = server.agent.post("/api/v1/human/ask", {"prompt": "x", "timeout_secs": "soon"})
    # The error names the field as the caller spelled it (the original's `timeout_secs`).
    assert status == 400 and "timeout_secs" in body["error"]["fields"], body
    status, body = server.agent.post("/api/v1/human/ask", {"promt": "typo"})
    assert status == 400 and "promt" in body["error"]["fields"]
    anonymous = stack.Api(server.agent.base_url, None)
    status, body = anonymous.post("/api/v1/human/ask", {"prompt": "x"})
    assert status == 401 and body["error"]["code"] == "not_authenticated"
    status, body = server.agent.request("GET", "/api/v1/human/ask")
    assert status == 405


def test_a_retry_with_the_same_key_after_a_dropped_connection_and_a_restart_picks_up_the_same_request(
    server,
):
    ask = {"prompt": "Apply the firewall change?", "timeout_secs": 120, "idempotency_key": "fw-7"}
    with pytest.raises((socket.timeout, TimeoutError, OSError)):
        server.agent.request("POST", "/api/v1/human/ask", ask, timeout=1)
    request_id = pending_id(server.operator, ask["prompt"])
    server.restart()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    retry = pool.submit(server.agent.post, "/api/v1/human/ask", ask)
    time.sleep(0.5)
    status, _ = server.operator.post(f"/v1/approvals/{request_id}/approve", {})
    assert status == 200
    status, answer = retry.result(timeout=10)
    assert status == 200 and answer["id"] == request_id and answer["status"] == "approved"
    _, pending = server.operator.get("/api/v1/human/pending")
    assert not [p for p in pending["pending"] if p["prompt"] == ask["prompt"]]


def test_two_hundred_waiting_asks_all_resolve_after_a_bulk_approval(server):
    n = 200
    pid = server.web.popen.pid
    threads_before = threads_of(pid)
    pool = concurrent.futures.ThreadPoolExecutor(n)
    asks = [
        pool.submit(
            server.agent.post, "/api/v1/human/ask", {"prompt": f"bulk {i}", "timeout_secs": 120}
        )
        for i in range(n)
    ]
    deadline = time.monotonic() + 60
    while True:
        _, page = server.operator.get("/v1/approvals?status=pending&limit=500")
        ids = [r["id"] for r in page["results"] if r["prompt"].startswith("bulk ")]
        if len(ids) == n or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(ids) == n
    time.sleep(1)  # every ask is now parked on the channel layer
    threads_waiting = threads_of(pid)
    early = [a.result() for a in asks if a.done()]
    assert not early, early[:3]
    assert threads_waiting - threads_before < 20, (
        f"{threads_waiting - threads_before} more server threads while {n} asks wait"
    )
    status, body = server.operator.post("/v1/approvals/bulk", {"ids": ids, "decision": "approve"})
    assert status == 200, body
    answers = [a.result(timeout=30) for a in asks]
    assert all(s == 200 for s, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert sorted(b["prompt"] for _, b in answers) == sorted(f"bulk {i}" for i in range(n))
    assert {b["status"] for _, b in answers} == {"approved"}
    assert {b["approved_by"] for _, b in answers} == {"ask-operator"}
