"""The MCP server's tools through an in-process MCP client, over a mock transport (and a
real local shell for the file tools). The stdio round trip against real VMs is in test_e2e."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import httpx
import pytest
from mcp import Client
from virsh_sandbox import AsyncVirshSandbox
from virsh_sandbox.mcp_server import build_server

from tests.sdk.fakes import (
    GRANT_APPROVAL,
    LocalShellServer,
    approved_json,
    egress_approval_json,
    error,
    sandbox_json,
)
from tests.sdk.test_client import EGRESS, Recorder, egress_server

SB = sandbox_json()["id"]
TOOLS = {
    "list_vms",
    "create",
    "run_command",
    "read_file",
    "write_file",
    "snapshot",
    "restore",
    "diff",
    "ask_human",
    "request_network_access",
    "destroy",
}


def call(handler, tool: str | None, arguments: dict | None = None):
    """List the tools, then call one; returns (tool names, result)."""

    async def go():
        server = build_server(
            lambda: AsyncVirshSandbox(
                "http://x", api_key="k", backoff=0, transport=httpx.MockTransport(handler)
            )
        )
        async with Client(server) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool(tool, arguments or {}) if tool else None
            return names, result

    return asyncio.run(go())


def text(result) -> str:
    return "".join(block.text for block in result.content)


def test_it_offers_the_sandbox_tools_with_descriptions():
    async def go():
        async with Client(build_server(lambda: AsyncVirshSandbox("http://x"))) as client:
            return (await client.list_tools()).tools

    tools = asyncio.run(go())
    assert {t.name for t in tools} == TOOLS
    run_command = next(t for t in tools if t.name == "run_command")
    assert set(run_command.input_schema["required"]) == {"sandbox_id", "command"}
    assert all(t.description for t in tools)


def test_create_waits_for_a_ready_sandbox_and_returns_its_id():
    rec = Recorder(
        {("POST", "/v1/sandboxes"): httpx.Response(201, json={"sandbox": sandbox_json()})}
    )
    _, result = call(rec, "create", {"memory_mb": 512})
    assert not result.is_error
    assert result.structured_content["sandbox_id"] == SB
    assert json.loads(rec.requests[0].content) == {
        "source_vm_name": "debian-base",
        "agent_id": "mcp-agent",
        "memory_mb": 512,
        "wait_for_ip": True,
    }


def test_run_command_returns_exit_code_and_both_streams():
    rec = Recorder(
        {
            ("POST", "/command"): httpx.Response(
                200,
                json={
                    "command": {"exit_code": 2, "stdout": "o\n", "stderr": "e\n", "duration_ms": 71}
                },
            )
        }
    )
    _, result = call(
        rec, "run_command", {"sandbox_id": SB, "command": "false", "timeout_seconds": 5}
    )
    assert not result.is_error
    assert result.structured_content == {
        "exit_code": 2,
        "stdout": "o\n",
        "stderr": "e\n",
        "timed_out": False,
        "output_truncated": False,
        "duration_ms": 71,
    }
    assert json.loads(rec.requests[0].content) == {"command": "false", "timeout_seconds": 5}


def test_file_tools_round_trip_text_and_binary(tmp_path):
    shell = LocalShellServer(tmp_path)
    path = str(tmp_path / "etc" / "app.conf")
    _, written = call(
        shell, "write_file", {"sandbox_id": SB, "path": path, "content": "port = 8080\n"}
    )
    assert written.structured_content == {"path": path, "bytes_written": 12}
    _, got = call(shell, "read_file", {"sandbox_id": SB, "path": path})
    assert got.structured_content["content"] == "port = 8080\n"
    assert got.structured_content["encoding"] == "utf-8"

    blob = os.urandom(3000) + b"\xff\xfe"
    binary = str(tmp_path / "blob")
    call(
        shell,
        "write_file",
        {
            "sandbox_id": SB,
            "path": binary,
            "content": base64.b64encode(blob).decode(),
            "encoding": "base64",
            "mode": "0600",
        },
    )
    _, got = call(shell, "read_file", {"sandbox_id": SB, "path": binary})
    assert got.structured_content["encoding"] == "base64"
    assert base64.b64decode(got.structured_content["content"]) == blob
    assert oct(os.stat(binary).st_mode & 0o777) == "0o600"


def test_the_servers_error_reaches_the_model():
    rec = Recorder(
        {
            ("POST", "/command"): error(
                409, "invalid_state", "Sandbox sb-1 is stopped; commands need it ready."
            )
        }
    )
    _, result = call(rec, "run_command", {"sandbox_id": SB, "command": "true"})
    assert result.is_error
    assert "invalid_state: Sandbox sb-1 is stopped; commands need it ready." in text(result)

    _, result = call(
        LocalShellServer(Path("/")), "read_file", {"sandbox_id": SB, "path": "/no/such/file"}
    )
    assert result.is_error and "no_such_file" in text(result)


@pytest.mark.parametrize("has_route", [False, True])
def test_ask_human_uses_the_approval_endpoint_only_where_it_exists(has_route):
    paths = {"/api/v1/human/ask": {"post": {}}} if has_route else {"/v1/health": {"get": {}}}
    rec = Recorder(
        {
            ("GET", "/api/schema/"): httpx.Response(200, json={"paths": paths}),
            ("POST", "/api/v1/human/ask"): httpx.Response(200, json=approved_json()),
        }
    )
    _, result = call(rec, "ask_human", {"question": "Apply to prod?", "sandbox_id": SB})
    if has_route:
        assert not result.is_error
        assert result.structured_content["status"] == "approved"
        assert result.structured_content["decided_by"] == "olivia"
        body = json.loads(rec.requests[-1].content)
        assert (
            body["prompt"] == "Apply to prod?"
            and body["sandbox_id"] == SB
            and body["idempotency_key"]
        )
    else:
        assert result.is_error and "no human approval endpoint" in text(result)
        assert [r.url.path for r in rec.requests] == ["/api/schema/"]


def test_request_network_access_tells_the_agent_a_human_decides_and_the_grant_expires():
    async def go():
        async with Client(build_server(lambda: AsyncVirshSandbox("http://x"))) as client:
            return (await client.list_tools()).tools

    tool = next(t for t in asyncio.run(go()) if t.name == "request_network_access")
    assert set(tool.input_schema["required"]) == {"sandbox_id", "host"}
    assert set(tool.input_schema["properties"]) == {
        "sandbox_id",
        "host",
        "port",
        "reason",
        "ttl_seconds",
        "wait",
    }
    description = " ".join(tool.description.split())
    assert "a human operator must approve" in description
    assert "expires after ttl_seconds" in description


def test_request_network_access_waits_for_the_grant_when_asked(quick_polls):
    rec = egress_server(egress_approval_json(), egress_approval_json("approved"))
    _, result = call(
        rec,
        "request_network_access",
        {"sandbox_id": SB, "host": "pypi.org", "reason": "pip install", "wait": True},
    )
    assert not result.is_error
    assert result.structured_content["allowed"] is True
    assert result.structured_content["rule"] == "grant pypi.org:443"
    assert result.structured_content["approval"]["id"] == GRANT_APPROVAL
    assert json.loads(rec.requests[0].content) == {
        "host": "pypi.org",
        "port": 443,
        "reason": "pip install",
    }
    assert [r.url.path for r in rec.requests][-1] == EGRESS


def test_request_network_access_refused_by_the_server_reaches_the_model():
    rec = Recorder(
        {
            ("POST", EGRESS + "/requests"): error(
                400,
                "invalid",
                "host: 127.0.0.1:443 is always denied (loopback); no grant can open it.",
                {"host": ["always denied"]},
            )
        }
    )
    _, result = call(rec, "request_network_access", {"sandbox_id": SB, "host": "127.0.0.1"})
    assert result.is_error and "is always denied (loopback)" in text(result)
