"""The SDK client without a server: httpx.MockTransport plays the API; the guest-side
scripts (files, streaming) run in a real local shell (fakes.LocalShellServer)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import httpx
import pytest
import virsh_sandbox
from virsh_sandbox import AsyncVirshSandbox, VirshSandbox
from virsh_sandbox._core import RetryPolicy
from virsh_sandbox.models import Diff, Sandbox, SandboxResponse

from tests.sdk.fakes import (
    GRANT_APPROVAL,
    LocalShellServer,
    approved_json,
    egress_approval_json,
    egress_connection_json,
    egress_policy_json,
    error,
    operation_json,
    sandbox_json,
)
from tests.sdk.readme_demo import run_readme_demo

SB = sandbox_json()["id"]


def client_for(handler, **kw) -> VirshSandbox:
    kw.setdefault("backoff", 0.0)
    return VirshSandbox(
        "http://sandbox.test", api_key="vsb_test", transport=httpx.MockTransport(handler), **kw
    )


class Recorder:
    """Answers from a list of (method, path suffix) -> response makers, and records."""

    def __init__(self, routes):
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for (method, suffix), respond in self.routes.items():
            if request.method == method and request.url.path.endswith(suffix):
                return respond(request) if callable(respond) else respond
        return httpx.Response(404, text="<title>Not Found</title>")

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def demo_routes():
    return {
        ("POST", "/v1/sandboxes"): httpx.Response(
            201,
            json={
                "sandbox": sandbox_json(),
                "operation": operation_json(),
                "ip_address": "127.0.0.1",
            },
        ),
        ("POST", "/command"): httpx.Response(
            200, json={"command": {"exit_code": 0, "stdout": "hello\n", "stderr": ""}}
        ),
        ("POST", "/snapshots"): httpx.Response(
            201,
            json={
                "snapshot": {"name": "nginx-installed", "status": "ready"},
                "operation": operation_json(kind="snapshot"),
            },
        ),
        ("DELETE", f"/v1/sandboxes/{SB}"): httpx.Response(
            202,
            json={
                "sandbox": sandbox_json(state="destroying"),
                "operation": operation_json("pending", kind="destroy"),
            },
        ),
        ("GET", "/v1/operations/0c6f1a8e-8a41-4a43-8d38-8b1f2c3d4e5f"): httpx.Response(
            200, json=operation_json(kind="destroy")
        ),
        ("GET", f"/v1/sandboxes/{SB}"): httpx.Response(
            200, json={"sandbox": sandbox_json(state="destroyed")}
        ),
    }


def test_it_runs_the_original_readme_demo_unchanged(monkeypatch):
    rec = Recorder(demo_routes())
    monkeypatch.setenv("VIRSH_SANDBOX_API_KEY", "vsb_from_env")
    # The demo as the original README wrote it; only the transport is injected.
    client = VirshSandbox(
        "http://localhost:8080", "http://localhost:8081", transport=httpx.MockTransport(rec)
    )
    run_readme_demo(client, "ubuntu-base", "apt update && apt install -y nginx")

    assert rec.calls() == [
        "POST /v1/sandboxes",
        f"POST /v1/sandboxes/{SB}/command",
        f"POST /v1/sandboxes/{SB}/snapshots",
        f"DELETE /v1/sandboxes/{SB}",
        "GET /v1/operations/0c6f1a8e-8a41-4a43-8d38-8b1f2c3d4e5f",
        f"GET /v1/sandboxes/{SB}",
    ]
    assert all(r.url.host == "localhost" and r.url.port == 8080 for r in rec.requests)
    assert {r.headers["authorization"] for r in rec.requests} == {"Bearer vsb_from_env"}
    bodies = [json.loads(r.content) for r in rec.requests if r.content]
    assert bodies == [
        {
            "source_vm_name": "ubuntu-base",
            "agent_id": "nginx-setup-agent",
            "auto_start": True,
            "wait_for_ip": True,
        },
        {"command": "apt update && apt install -y nginx"},
        {"name": "nginx-installed", "wait": True},
    ]
    assert (
        client.base_url == "http://localhost:8080"
        and client._engine.tmux_host == "http://localhost:8081"
    )


def test_it_prefers_the_constructor_key_and_sends_none_without_one(monkeypatch):
    monkeypatch.setenv("VIRSH_SANDBOX_API_KEY", "vsb_env")
    rec = Recorder({("GET", "/v1/vms"): httpx.Response(200, json={"vms": [], "hosts": []})})
    VirshSandbox("http://x", api_key="vsb_arg", transport=httpx.MockTransport(rec)).vms.list_vms()
    monkeypatch.delenv("VIRSH_SANDBOX_API_KEY")
    VirshSandbox("http://x", transport=httpx.MockTransport(rec)).vms.list_vms()
    assert rec.requests[0].headers["authorization"] == "Bearer vsb_arg"
    assert "authorization" not in rec.requests[1].headers


def test_it_reads_the_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("VIRSH_SANDBOX_URL", "http://from-env:9000/")
    assert VirshSandbox().base_url == "http://from-env:9000"


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid", virsh_sandbox.ValidationError),
        (401, "not_authenticated", virsh_sandbox.AuthError),
        (403, "permission_denied", virsh_sandbox.AuthError),
        (404, "not_found", virsh_sandbox.NotFound),
        (409, "invalid_state", virsh_sandbox.Conflict),
        (500, "error", virsh_sandbox.ServerError),
    ],
)
def test_it_raises_the_servers_error_with_status_code_message_and_fields(status, code, cls):
    fields = (
        {"memory_mb": ["Ensure this value is less than or equal to 16384."]}
        if status == 400
        else {}
    )
    client = client_for(lambda r: error(status, code, f"the message {status}", fields), retries=0)
    with pytest.raises(cls) as info:
        client.sandbox.create_sandbox(source_vm_name="debian-base", memory_mb=99999)
    err = info.value
    assert (err.status, err.code, err.message, err.fields) == (
        status,
        code,
        f"the message {status}",
        fields,
    )
    assert err.method == "POST" and err.url.endswith("/v1/sandboxes")
    assert f"{status} {code}: the message {status}" in str(err)


def test_it_names_a_route_the_server_does_not_have():
    client = client_for(lambda r: httpx.Response(404, text="<html><title>Not Found</title></html>"))
    with pytest.raises(virsh_sandbox.NotFound) as info:
        client.playbooks.get_playbook(SB, "before", "after")
    assert info.value.code == "no_route"
    assert "has no route GET" in info.value.message and "/playbook" in info.value.message


def test_it_retries_a_get_on_502_503_and_504_with_bounded_attempts():
    answers = [
        httpx.Response(502, text="bad gateway"),
        error(503, "busy", "try again"),
        httpx.Response(504, text="gw"),
    ]
    rec = Recorder(
        {
            ("GET", "/v1/vms"): lambda r: (
                answers.pop(0) if answers else httpx.Response(200, json={"vms": []})
            )
        }
    )
    assert client_for(rec, retries=3).vms.list_vms().vms == []
    assert len(rec.requests) == 4

    rec = Recorder(
        {
            ("GET", "/v1/vms"): httpx.Response(
                503, json={"error": {"code": "busy", "message": "later"}}
            )
        }
    )
    with pytest.raises(virsh_sandbox.ServerError) as info:
        client_for(rec, retries=2).vms.list_vms()
    assert info.value.status == 503 and info.value.code == "busy"
    assert len(rec.requests) == 3  # one try and two retries, then the error


def creates_after(refusal: httpx.Response) -> Recorder:
    """POST /v1/sandboxes answers `refusal` once, then creates."""
    answers = [refusal]
    created = {"sandbox": sandbox_json(), "operation": operation_json("pending")}
    return Recorder(
        {
            ("POST", "/v1/sandboxes"): lambda r: (
                answers.pop(0) if answers else httpx.Response(202, json=created)
            )
        }
    )


def test_it_retries_a_post_on_503_but_not_on_a_gateways_502():
    # 503: the server refused before doing anything (no worker with room): safe to repeat.
    rec = creates_after(error(503, "capacity", "no room"))
    assert client_for(rec).sandbox.create_sandbox(source_vm_name="debian-base").sandbox.id == SB
    assert len(rec.requests) == 2
    # A 502 may come after the work started; a repeated create would make a second VM.
    rec = Recorder({("POST", "/v1/sandboxes"): httpx.Response(502, text="bad gateway")})
    with pytest.raises(virsh_sandbox.ServerError):
        client_for(rec).sandbox.create_sandbox(source_vm_name="debian-base")
    assert len(rec.requests) == 1


def test_it_retries_a_throttled_post_but_not_a_command_quota():
    # 429 `throttled`: the key's request rate; the server did nothing, so any method repeats.
    throttled = httpx.Response(
        429,
        headers={"Retry-After": "0"},
        json={"error": {"code": "throttled", "message": "requests: 600 of 600", "fields": {}}},
    )
    rec = creates_after(throttled)
    assert client_for(rec).sandbox.create_sandbox(source_vm_name="debian-base").sandbox.id == SB
    assert len(rec.requests) == 2
    # 429 `quota_exceeded`: commands of this agent still run; waiting is the caller's choice.
    message = "concurrent commands: 4 of 4 running (quota max_concurrent_commands = 4, ...)"
    rec = Recorder({("POST", "/command"): error(429, "quota_exceeded", message)})
    with pytest.raises(virsh_sandbox.RateLimited) as info:
        client_for(rec).sandbox.run_sandbox_command(SB, "true")
    assert (info.value.status, info.value.code, info.value.message) == (
        429,
        "quota_exceeded",
        message,
    )
    assert len(rec.requests) == 1


def test_it_never_retries_a_final_operation_failure():
    rec = Recorder(
        {("GET", "/diff"): error(502, "operation_failed", "the diff failed: no loop device")}
    )
    with pytest.raises(virsh_sandbox.ServerError) as info:
        client_for(rec).sandbox.get_diff(SB, "a")
    assert info.value.code == "operation_failed" and len(rec.requests) == 1


def test_it_retries_connection_errors_for_gets_and_unsent_posts_only():
    attempts = {"n": 0}

    def flaky(request):
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"vms": []})

    client_for(flaky).vms.list_vms()
    assert attempts["n"] == 3

    def broken_after_send(request):
        attempts["n"] += 1
        raise httpx.ReadError("connection reset", request=request)

    attempts["n"] = 0
    with pytest.raises(virsh_sandbox.TransportError) as info:
        client_for(broken_after_send).sandbox.run_sandbox_command(SB, "touch /once")
    assert attempts["n"] == 1, "a command whose answer was lost must not run twice"
    assert info.value.code == "unreachable"


def test_it_backs_off_exponentially_within_bounds_and_honours_retry_after():
    policy = RetryPolicy(retries=5, backoff=0.5, max_backoff=4.0)
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0]):
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "3"})) == 3.0
    assert policy.delay(0, httpx.Response(503, headers={"Retry-After": "120"})) == 4.0


def test_it_retries_a_blocking_ask_with_the_same_idempotency_key():
    answers = [httpx.Response(502, text="proxy restarted")]
    rec = Recorder(
        {
            ("POST", "/api/v1/human/ask"): lambda r: (
                answers.pop(0) if answers else httpx.Response(200, json=approved_json())
            )
        }
    )
    answer = client_for(rec).human.ask("Apply?", timeout_secs=30)
    keys = [json.loads(r.content)["idempotency_key"] for r in rec.requests]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert answer.is_approved and answer.decided_by == "olivia"


def test_models_keep_unknown_fields_and_tolerate_missing_ones():
    resp = SandboxResponse.from_dict(
        {"sandbox": {"id": "x", "state": "ready", "gpu": "none"}, "new_top": 1}
    )
    assert resp.sandbox.gpu == "none" and resp.sandbox.extra == {"gpu": "none"}
    assert resp.sandbox.memory_mb is None and resp.operation is None and resp.new_top == 1
    assert resp.to_dict()["sandbox"]["gpu"] == "none"
    with pytest.raises(AttributeError):
        _ = resp.sandbox.no_such_field
    assert "state='ready'" in repr(Sandbox.from_dict({"id": "x", "state": "ready"}))

    diff = Diff.from_dict(
        {
            "from": "a",
            "to": "now",
            "files": {"count": 1, "results": [{"change": "added", "path": "/x", "owner": "root"}]},
        }
    )
    assert (diff.from_, diff.to, diff.files.results[0].path, diff.files.results[0].owner) == (
        "a",
        "now",
        "/x",
        "root",
    )
    assert diff.to_dict()["from"] == "a"


def test_it_reads_paginated_lists():
    rec = Recorder(
        {
            ("GET", "/v1/sandboxes"): httpx.Response(
                200,
                json={
                    "count": 3,
                    "next": "http://x/v1/sandboxes?offset=2",
                    "previous": None,
                    "results": [sandbox_json(), sandbox_json("b")],
                },
            )
        }
    )
    listing = client_for(rec).sandbox.list_sandboxes(state="ready", limit=2)
    assert listing.total == 3 and [s.id for s in listing.sandboxes] == [SB, "b"] and listing.next
    assert dict(rec.requests[0].url.params) == {"state": "ready", "limit": "2"}


def test_it_waits_for_an_operation_and_reports_its_progress():
    states = [
        ("pending", 0, "queued"),
        ("running", 40, "booting"),
        ("running", 40, "booting"),
        ("succeeded", 100, "ready"),
    ]
    rec = Recorder(
        {
            ("GET", "/v1/operations/op1"): lambda r: httpx.Response(
                200,
                json=dict(
                    zip(("status", "progress", "message"), states.pop(0), strict=True),
                    id="op1",
                    kind="create",
                ),
            )
        }
    )
    seen = []
    client = client_for(rec)
    op = client.operations.wait(
        "op1", 30, on_progress=lambda o: seen.append((o.progress, o.message))
    )
    assert op.succeeded and len(rec.requests) == 4
    assert seen == [(0, "queued"), (40, "booting"), (100, "ready")]  # unchanged polls not repeated


def test_a_create_queued_for_a_boot_slot_is_waited_for_as_in_progress():
    answers = [
        {"status": "pending", "message": "queued: position 2 of 2 on host h1", "queue_position": 2},
        {"status": "pending", "message": "queued: position 1 of 1 on host h1", "queue_position": 1},
        {"status": "running", "message": "booting: waiting for SSH", "queue_position": None},
        {"status": "succeeded", "message": "ready", "queue_position": None},
    ]
    rec = Recorder(
        {
            ("GET", "/v1/operations/op1"): lambda r: httpx.Response(
                200, json={**answers.pop(0), "id": "op1", "kind": "create"}
            )
        }
    )
    seen = []
    op = client_for(rec).operations.wait(
        "op1", 30, on_progress=lambda o: seen.append(o.queue_position)
    )
    assert op.succeeded and seen == [2, 1, None, None]  # one report per change of message
    queued = Sandbox.from_dict({"state": "queued", "queue_position": 1})
    assert queued.is_booting and queued.queue_position == 1
    assert not Sandbox.from_dict({"state": "ready"}).is_booting


def test_it_raises_when_an_operation_fails_or_a_wait_runs_out():
    rec = Recorder(
        {
            ("GET", "/v1/operations/op1"): httpx.Response(
                200,
                json={"id": "op1", "kind": "snapshot", "status": "failed", "error": "disk full"},
            )
        }
    )
    with pytest.raises(virsh_sandbox.OperationFailed) as info:
        client_for(rec).operations.wait("op1")
    assert info.value.operation.error == "disk full" and "disk full" in info.value.message
    assert client_for(rec).operations.wait("op1", raise_on_failure=False).status == "failed"

    rec = Recorder(
        {
            ("GET", "/v1/operations/op2"): httpx.Response(
                200, json={"id": "op2", "status": "running"}
            )
        }
    )
    t0 = time.monotonic()
    with pytest.raises(virsh_sandbox.WaitTimeout):
        client_for(rec).operations.wait("op2", timeout=0.5)
    assert time.monotonic() - t0 < 3


# -- network access (egress) ------------------------------------------------------------------

EGRESS = f"/v1/sandboxes/{SB}/egress"


def egress_server(*decisions: dict, already_allowed: bool = False) -> Recorder:
    """The egress routes: a request opens a pending approval (or is allowed already); each
    poll of the approval answers the next of ``decisions`` (pending after the last one);
    the policy shows the grant once an approval was approved."""
    polls = list(decisions)
    granted: list[str] = []

    def poll(request):
        body = polls.pop(0) if polls else egress_approval_json()
        if body["status"] == "approved":
            granted.append(body["id"])
        return httpx.Response(200, json=body)

    answer = (
        httpx.Response(
            200, json={"allowed": True, "rule": "settings pypi.org:443", "approval": None}
        )
        if already_allowed
        else httpx.Response(
            202, json={"allowed": False, "rule": "", "approval": egress_approval_json()}
        )
    )
    return Recorder(
        {
            ("POST", EGRESS + "/requests"): answer,
            ("GET", f"/v1/approvals/{GRANT_APPROVAL}"): poll,
            ("GET", EGRESS): lambda r: httpx.Response(200, json=egress_policy_json(*granted)),
        }
    )


def test_a_network_request_waits_for_the_operators_approval_then_names_the_grant(quick_polls):
    rec = egress_server(
        egress_approval_json(),
        egress_approval_json("approved", decided_by="olivia"),
    )
    result = client_for(rec).sandbox.request_network_access(
        SB, "pypi.org", reason="pip install flask", ttl_seconds=600, wait=True
    )
    assert result.allowed and result.rule == "grant pypi.org:443"
    assert result.approval.status == "approved" and result.approval.decided_by == "olivia"
    assert json.loads(rec.requests[0].content) == {
        "host": "pypi.org",
        "port": 443,
        "reason": "pip install flask",
        "ttl_seconds": 600,
    }
    assert rec.calls() == [
        f"POST {EGRESS}/requests",
        f"GET /v1/approvals/{GRANT_APPROVAL}",
        f"GET /v1/approvals/{GRANT_APPROVAL}",
        f"GET {EGRESS}",
    ]


@pytest.mark.parametrize("outcome", ["denied", "expired", "cancelled"])
def test_a_denied_or_expired_network_request_is_an_answer_not_an_error(quick_polls, outcome):
    rec = egress_server(egress_approval_json(outcome, reason="not today"))
    result = client_for(rec).sandbox.request_network_access(SB, "pypi.org", wait=True)
    assert not result.allowed and result.rule == ""
    assert result.approval.status == outcome and result.approval.reason == "not today"
    assert rec.calls()[-1] == f"GET /v1/approvals/{GRANT_APPROVAL}"  # no policy read


def test_a_network_request_without_wait_returns_the_pending_approval_at_once():
    rec = egress_server()
    result = client_for(rec).sandbox.request_network_access(SB, "pypi.org", 8443)
    assert not result.allowed and result.approval.is_pending
    assert result.approval.action_type == "egress_grant"
    assert json.loads(rec.requests[0].content) == {"host": "pypi.org", "port": 8443}
    assert len(rec.requests) == 1


def test_a_host_the_policy_allows_needs_no_approval_and_no_wait():
    rec = egress_server(already_allowed=True)
    result = client_for(rec).sandbox.request_network_access(SB, "pypi.org", wait=True)
    assert result.allowed and result.rule == "settings pypi.org:443" and result.approval is None
    assert len(rec.requests) == 1


def test_waiting_on_an_approval_gives_up_after_the_timeout(quick_polls):
    rec = egress_server()  # pending for ever
    t0 = time.monotonic()
    with pytest.raises(virsh_sandbox.WaitTimeout) as info:
        client_for(rec).sandbox.request_network_access(SB, "pypi.org", wait=True, timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert f"approval {GRANT_APPROVAL} still pending" in info.value.message
    with pytest.raises(virsh_sandbox.WaitTimeout):  # no timeout: the client's wait_timeout
        client_for(rec, wait_timeout=0.3).sandbox.request_network_access(SB, "x.org", wait=True)
    with pytest.raises(virsh_sandbox.WaitTimeout):
        client_for(rec).approvals.wait(GRANT_APPROVAL, timeout=0.3)


def test_the_async_client_waits_on_the_same_approval(quick_polls):
    rec = egress_server(egress_approval_json("approved"))

    async def ask():
        async with AsyncVirshSandbox(
            "http://x", api_key="k", backoff=0, transport=httpx.MockTransport(rec)
        ) as c:
            return await c.sandbox.request_network_access(SB, "pypi.org", wait=True)

    result = asyncio.run(ask())
    assert result.allowed and result.rule == "grant pypi.org:443"
    assert len(rec.requests) == 3


def test_it_reads_the_egress_policy_and_the_connection_log():
    rec = Recorder(
        {
            ("GET", EGRESS): httpx.Response(200, json=egress_policy_json(GRANT_APPROVAL)),
            ("GET", EGRESS + "/log"): httpx.Response(
                200,
                json={
                    "count": 5,
                    "next": f"http://x{EGRESS}/log?offset=1",
                    "previous": None,
                    "results": [egress_connection_json(error="not in policy")],
                },
            ),
        }
    )
    client = client_for(rec)
    policy = client.sandbox.get_egress_policy(SB)
    assert policy.enabled and policy.proxy == "http://10.0.2.100:3128"
    grant = policy.rules[1]
    assert (grant.rule, grant.source, grant.approval_id) == (
        "pypi.org:443",
        "grant",
        GRANT_APPROVAL,
    )
    assert "the KVM host's own addresses" in policy.always_denied

    log = client.sandbox.list_egress_log(SB, allowed=False, limit=1)
    assert log.total == 5 and log.next
    (conn,) = log.connections
    assert (conn.host, conn.port, conn.allowed, conn.rule) == (
        "evil.example",
        443,
        False,
        "not in policy",
    )
    assert dict(rec.requests[1].url.params) == {"allowed": "false", "limit": "1"}


def test_create_names_the_hosts_the_guest_may_reach():
    rec = Recorder(
        {("POST", "/v1/sandboxes"): httpx.Response(202, json={"sandbox": sandbox_json()})}
    )
    client_for(rec).sandbox.create_sandbox(
        "debian-base", "me", egress_allow=["pypi.org", "files.pythonhosted.org:443"]
    )
    assert json.loads(rec.requests[0].content) == {
        "source_vm_name": "debian-base",
        "agent_id": "me",
        "egress_allow": ["pypi.org", "files.pythonhosted.org:443"],
    }


def test_it_finds_out_which_routes_the_server_has():
    schema = {"paths": {"/v1/sandboxes/{id}/command/": {"post": {}}, "/v1/health": {"get": {}}}}
    rec = Recorder({("GET", "/api/schema/"): httpx.Response(200, json=schema)})
    client = client_for(rec)
    assert client.supports("POST", "/v1/sandboxes/{sandbox_id}/command")
    assert not client.supports("POST", "/api/v1/human/ask")
    assert len(rec.requests) == 1  # the schema is read once

    # Without a schema it asks the route itself: an unrouted path is a 404.
    rec = Recorder({("OPTIONS", "/v1/health"): httpx.Response(200, json={})})
    client = client_for(rec)
    assert client.supports("GET", "/v1/health") and not client.supports("POST", "/api/v1/human/ask")


def test_the_async_twin_has_the_same_surface_and_runs_the_demo():
    sync, asyn = VirshSandbox("http://x"), AsyncVirshSandbox("http://x")
    for name in (
        "sandbox",
        "vms",
        "health",
        "operations",
        "files",
        "human",
        "approvals",
        "playbooks",
        "tmux",
        "audit",
    ):
        sync_methods = {m for m in dir(getattr(sync, name)) if not m.startswith("_")}
        assert sync_methods == {m for m in dir(getattr(asyn, name)) if not m.startswith("_")}, name

    rec = Recorder(demo_routes())

    async def demo():
        async with AsyncVirshSandbox(
            "http://localhost:8080", api_key="k", transport=httpx.MockTransport(rec)
        ) as c:
            sandbox = (
                await c.sandbox.create_sandbox(
                    source_vm_name="debian-base", agent_id="a", wait_for_ip=True
                )
            ).sandbox
            out = await c.sandbox.run_sandbox_command(sandbox.id, "echo hello")
            await c.sandbox.create_snapshot(sandbox.id, name="s")
            gone = await c.sandbox.destroy_sandbox(sandbox.id)
            return out, gone

    out, gone = asyncio.run(demo())
    assert out.stdout == "hello\n" and out.exit_code == 0
    assert gone.operation.succeeded and gone.sandbox.state == "destroyed"
    assert len(rec.requests) == 6


# -- files and streaming through the command API, against a real shell ------------------------


def test_files_round_trip_bytes_exactly_in_chunks(tmp_path):
    server = LocalShellServer(tmp_path)
    client = client_for(server)
    payload = os.urandom(150_000) + b"\x00\nend"
    target = tmp_path / "deep" / "dir" / "blob.bin"
    written = client.files.write_file(SB, str(target), payload, mode="0640")
    assert written.bytes_written == len(payload)
    assert target.read_bytes() == payload and oct(target.stat().st_mode & 0o777) == "0o640"
    assert len(server.commands) == 4  # 48 KiB per write command
    got = client.files.read_file(SB, str(target))
    assert got.content == payload and got.size == len(payload)
    assert not list(target.parent.glob("*.vsb-tmp"))

    # Rewriting keeps the existing mode; text works too.
    client.files.write_file(SB, str(target), "héllo\n")
    assert target.read_text() == "héllo\n" and oct(target.stat().st_mode & 0o777) == "0o640"
    assert client.files.read_file(SB, str(target)).text == "héllo\n"


def test_reading_shrinks_its_chunks_when_the_server_caps_output(tmp_path):
    server = LocalShellServer(tmp_path, output_limit=20_000)
    data = os.urandom(70_000)
    (tmp_path / "big").write_bytes(data)
    assert client_for(server).files.read_file(SB, str(tmp_path / "big")).content == data


def test_reading_a_missing_file_or_a_directory_says_so(tmp_path):
    client = client_for(LocalShellServer(tmp_path))
    with pytest.raises(virsh_sandbox.NotFound) as info:
        client.files.read_file(SB, str(tmp_path / "nope"))
    assert info.value.code == "no_such_file"
    with pytest.raises(virsh_sandbox.ValidationError):
        client.files.read_file(SB, str(tmp_path))


def stream_directory(server: LocalShellServer) -> str:
    """The guest directory of a stream, from the poll commands (``d=<dir>``)."""
    polls = [c for c in server.commands if "rc=$(cat" in c]
    return polls[0].split("\n")[0][2:].strip("'")


def test_stream_command_yields_output_as_it_comes_then_the_exit_code(tmp_path):
    server = LocalShellServer(tmp_path)
    client = client_for(server)
    script = (
        "echo one; sleep 0.6; echo two >&2; printf 'caf\\303\\251 '; echo $GREETING; pwd; exit 3"
    )
    events, arrived = [], []
    for event in client.sandbox.stream_command(
        SB, script, env={"GREETING": "hi"}, cwd=str(tmp_path), poll_interval=0.1
    ):
        events.append(event)
        arrived.append(time.monotonic())
    out = "".join(e.data for e in events if e.kind == "stdout")
    assert out == f"one\ncafé hi\n{tmp_path}\n"
    assert "".join(e.data for e in events if e.kind == "stderr") == "two\n"
    assert events[0].kind == "stdout" and events[0].data == "one\n"
    assert arrived[1] - arrived[0] > 0.3, "the first line came before the command ended"
    assert (events[-1].kind, events[-1].exit_code, events[-1].timed_out) == ("exit", 3, False)
    directory = stream_directory(server)
    assert directory.startswith("/tmp/vsb-stream.") and not os.path.exists(directory)


def test_stream_command_marks_a_timeout(tmp_path):
    client = client_for(LocalShellServer(tmp_path))
    events = list(
        client.sandbox.stream_command(SB, "echo go; sleep 20", timeout_seconds=1, poll_interval=0.2)
    )
    assert events[0].data == "go\n"
    assert events[-1].kind == "exit" and events[-1].timed_out and events[-1].exit_code == 124


def test_stopping_a_stream_early_kills_the_command_and_cleans_up(tmp_path):
    server = LocalShellServer(tmp_path)
    client = client_for(server)
    marker = f"vsb-stream-test-{os.getpid()}"
    stream = client.sandbox.stream_command(
        SB, f"echo started; exec -a {marker} sleep 60", poll_interval=0.1
    )
    for event in stream:
        assert event.data == "started\n"
        break
    stream.close()
    assert not os.path.exists(stream_directory(server)), "the stream's files are removed"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, "the command was killed"


def test_the_async_stream_yields_the_same_events(tmp_path):
    server = LocalShellServer(tmp_path)

    async def collect():
        async with AsyncVirshSandbox(
            "http://x", transport=httpx.MockTransport(server), backoff=0
        ) as c:
            return [
                e
                async for e in c.sandbox.stream_command(
                    SB, "echo a; echo b >&2; exit 7", poll_interval=0.05
                )
            ]

    events = asyncio.run(collect())
    assert [(e.kind, e.data) for e in events[:-1]] == [("stdout", "a\n"), ("stderr", "b\n")]
    assert events[-1].exit_code == 7


def test_an_operator_lists_hosts_and_drains_one():
    host = {
        "name": "kvm-a",
        "draining": False,
        "alive": True,
        "resources": {"memory_total_mb": 24000, "guests": {"running": 3}},
        "committed_memory_mb": 768,
        "free_memory_mb": 23232,
        "sandboxes": {"ready": 3},
    }
    rec = Recorder(
        {
            ("GET", "/v1/hosts"): httpx.Response(200, json={"hosts": [host]}),
            ("POST", "/v1/hosts/kvm-a/drain"): httpx.Response(200, json={**host, "draining": True}),
        }
    )
    client = client_for(rec)
    (listed,) = client.hosts.list_hosts().hosts
    assert (listed.name, listed.free_memory_mb, listed.sandboxes) == ("kvm-a", 23232, {"ready": 3})
    assert listed.resources["guests"]["running"] == 3
    assert client.hosts.drain_host("kvm-a").draining is True
    assert rec.calls() == ["GET /v1/hosts", "POST /v1/hosts/kvm-a/drain"]


def test_an_agents_key_finds_no_hosts():
    rec = Recorder({("GET", "/v1/hosts"): error(404, "not_found", "Not found.")})
    with pytest.raises(virsh_sandbox.errors.NotFound):
        client_for(rec).hosts.list_hosts()
