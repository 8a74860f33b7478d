"""``virsh-sandbox-mcp``: the sandbox service as MCP tools, over stdio.

An MCP-capable agent (Claude Desktop, an IDE, any MCP client) starts this process and gets
tools to create a sandbox, run commands, read and write files, snapshot, restore, diff, ask a
human, ask for network access and destroy, with no code. Configuration: ``VIRSH_SANDBOX_URL`` and
``VIRSH_SANDBOX_API_KEY`` (or ``--url`` / ``--api-key``).

Needs the ``mcp`` extra: ``pip install 'virsh-sandbox[mcp]'``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import errors
from ._core import API_KEY_ENV, URL_ENV
from .client import AsyncVirshSandbox

HUMAN_ASK_ROUTE = ("POST", "/api/v1/human/ask")

INSTRUCTIONS = (
    "Disposable Debian/Linux VMs (sandboxes) for trying changes safely. Typical flow: create a "
    "sandbox (list_vms shows source VMs), snapshot it as a checkpoint, run commands and write "
    "files, look at diff against the checkpoint, restore it if something went wrong, ask_human "
    "before anything that would touch production, and destroy the sandbox when done. Commands "
    "run as root with /bin/sh. The guest reaches the network only through the host's egress "
    "proxy, and only the hosts its policy allows; request_network_access asks an operator for "
    "more, for a limited time."
)


def _load_server_class() -> Any:
    try:  # mcp 2.x
        from mcp.server.mcpserver import MCPServer

        return MCPServer
    except ImportError:  # mcp 1.x
        from mcp.server.fastmcp import FastMCP

        return FastMCP


def _load_tool_error() -> type[Exception]:
    try:  # mcp 2.x
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:  # mcp 1.x
        from mcp.server.fastmcp.exceptions import ToolError
    return ToolError


def _anticipated(fn: Callable[..., Any], tool_error: type[Exception]) -> Callable[..., Any]:
    """The server's error (and bad arguments) reach the model as the tool's error text; MCP
    would otherwise show only "Error executing tool" for an exception it did not expect."""

    @functools.wraps(fn)
    async def tool(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except errors.VirshSandboxError as exc:
            fields = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.fields.items())
            raise tool_error(
                f"{exc.code}: {exc.message}" + (f" ({fields})" if fields else "")
            ) from exc
        except ValueError as exc:
            raise tool_error(str(exc)) from exc

    return tool


def _command_result(cmd: Any) -> dict[str, Any]:
    return {
        "exit_code": cmd.exit_code,
        "stdout": cmd.stdout or "",
        "stderr": cmd.stderr or "",
        "timed_out": bool(cmd.timed_out),
        "output_truncated": bool(cmd.stdout_truncated or cmd.stderr_truncated),
        "duration_ms": cmd.duration_ms,
    }


def _sandbox_summary(sb: Any) -> dict[str, Any]:
    return {
        "sandbox_id": sb.id,
        "name": sb.name,
        "state": sb.state,
        "source_vm_name": sb.source_vm_name,
        "agent_id": sb.agent_id,
    }


def build_server(client_factory: Callable[[], AsyncVirshSandbox] | None = None) -> Any:
    """The MCP server with its tools. ``client_factory`` makes the SDK client (tests pass one
    over a mock transport); by default it reads the URL and key from the environment."""
    server_class = _load_server_class()
    server = server_class("virsh-sandbox", instructions=INSTRUCTIONS)
    tool_error = _load_tool_error()
    holder: dict[str, AsyncVirshSandbox] = {}

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        return server.tool()(_anticipated(fn, tool_error))

    def client() -> AsyncVirshSandbox:
        if "client" not in holder:
            holder["client"] = client_factory() if client_factory else AsyncVirshSandbox()
        return holder["client"]

    @tool
    async def list_vms() -> dict[str, Any]:
        """List the source VMs sandboxes can be created from."""
        vms = await client().vms.list_vms()
        return {"vms": [{"name": v.name, "description": v.description} for v in vms.vms]}

    @tool
    async def create(
        source_vm_name: str = "debian-base",
        agent_id: str = "mcp-agent",
        memory_mb: int | None = None,
        vcpus: int | None = None,
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Create a sandbox (a disposable VM cloned from source_vm_name) and wait until it
        accepts commands. Returns its sandbox_id for the other tools."""
        result = await client().sandbox.create_sandbox(
            source_vm_name,
            agent_id,
            memory_mb=memory_mb,
            vcpus=vcpus,
            ttl_seconds=ttl_seconds,
            wait_for_ip=True,
        )
        return _sandbox_summary(result.sandbox)

    @tool
    async def run_command(
        sandbox_id: str,
        command: str,
        timeout_seconds: int | None = None,
        cwd: str | None = None,
    ) -> dict[str, Any]:
        """Run a shell command as root in the sandbox and return exit_code, stdout and
        stderr. A non-zero exit code is a normal result, not an error."""
        result = await client().sandbox.run_sandbox_command(
            sandbox_id, command, timeout_seconds=timeout_seconds, cwd=cwd
        )
        return _command_result(result.command)

    @tool
    async def read_file(sandbox_id: str, path: str) -> dict[str, Any]:
        """Read a file from the sandbox. Text comes back as content with encoding "utf-8";
        binary files as base64 with encoding "base64"."""
        got = await client().files.read_file(sandbox_id, path)
        try:
            return {
                "path": path,
                "size": got.size,
                "encoding": "utf-8",
                "content": got.content.decode("utf-8"),
            }
        except UnicodeDecodeError:
            return {
                "path": path,
                "size": got.size,
                "encoding": "base64",
                "content": base64.b64encode(got.content).decode(),
            }

    @tool
    async def write_file(
        sandbox_id: str,
        path: str,
        content: str,
        encoding: str = "utf-8",
        mode: str | None = None,
    ) -> dict[str, Any]:
        """Write a file in the sandbox (parent directories are created; an existing file keeps
        its owner and mode unless mode, e.g. "0644", is given). encoding is "utf-8" or
        "base64" for binary content."""
        if encoding not in ("utf-8", "base64"):
            raise ValueError('encoding must be "utf-8" or "base64"')
        data = base64.b64decode(content) if encoding == "base64" else content.encode("utf-8")
        result = await client().files.write_file(sandbox_id, path, data, mode=mode)
        return {"path": path, "bytes_written": result.bytes_written}

    @tool
    async def snapshot(
        sandbox_id: str, name: str, description: str | None = None
    ) -> dict[str, Any]:
        """Checkpoint the sandbox (disk and, while it runs, memory) under a name, to diff
        against or restore later."""
        result = await client().sandbox.create_snapshot(sandbox_id, name, description=description)
        snap = result.snapshot
        return {"name": snap.name, "status": snap.status, "has_memory": snap.has_memory}

    @tool
    async def restore(sandbox_id: str, name: str) -> dict[str, Any]:
        """Put the sandbox back to a snapshot: every change made since is undone."""
        result = await client().sandbox.restore_snapshot(sandbox_id, name)
        return _sandbox_summary(result.sandbox)

    @tool
    async def diff(
        sandbox_id: str, from_snapshot: str, to_snapshot: str = "now", limit: int = 200
    ) -> dict[str, Any]:
        """What changed since a snapshot (to another snapshot, or now): files added, removed
        and modified with unified diffs of small text files, packages, systemd units, users,
        groups, and the commands run in between."""
        d = await client().sandbox.get_diff(sandbox_id, from_snapshot, to_snapshot, limit=limit)
        return d.to_dict()

    @tool
    async def ask_human(
        question: str,
        sandbox_id: str | None = None,
        action_type: str = "other",
        timeout_seconds: int = 600,
    ) -> dict[str, Any]:
        """Ask a human operator to approve something and wait for the decision (approved,
        denied or expired). Use it before changes that matter outside the sandbox."""
        c = client()
        if not await c.supports(*HUMAN_ASK_ROUTE):
            raise errors.VirshSandboxError(
                "this server has no human approval endpoint yet (POST /api/v1/human/ask)",
                code="no_route",
            )
        answer = await c.human.ask(
            question, action_type=action_type, sandbox_id=sandbox_id, timeout_secs=timeout_seconds
        )
        return answer.to_dict()

    @tool
    async def request_network_access(
        sandbox_id: str,
        host: str,
        port: int = 443,
        reason: str | None = None,
        ttl_seconds: int | None = None,
        wait: bool = False,
    ) -> dict[str, Any]:
        """Ask for the sandbox's guest to reach host:port through the egress proxy. If the
        policy already allows it, allowed is true at once. Otherwise a human operator must
        approve: give a reason they can judge. The grant, once approved, expires after
        ttl_seconds (the server's default if not given); ask again after that. With wait
        true this blocks until the operator decides (approval.status: approved, denied,
        expired or cancelled; allowed is true once approved). With wait false it returns the
        pending approval at once; calling again before the decision returns that same
        request (check it with wait true). Private, loopback
        and link-local addresses are never reachable, whatever is granted."""
        result = await client().sandbox.request_network_access(
            sandbox_id, host, port, reason=reason, ttl_seconds=ttl_seconds, wait=wait
        )
        return result.to_dict()

    @tool
    async def destroy(sandbox_id: str) -> dict[str, Any]:
        """Destroy the sandbox: its VM, disk and snapshots are gone."""
        result = await client().sandbox.destroy_sandbox(sandbox_id)
        return {"sandbox_id": sandbox_id, "state": result.sandbox.state if result.sandbox else None}

    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="virsh-sandbox-mcp", description="virsh-sandbox as MCP tools over stdio."
    )
    parser.add_argument("--url", help=f"server URL (${URL_ENV})")
    parser.add_argument("--api-key", help=f"agent API key (${API_KEY_ENV})")
    args = parser.parse_args(argv)
    if args.url:
        os.environ[URL_ENV] = args.url
    if args.api_key:
        os.environ[API_KEY_ENV] = args.api_key
    # httpx logs every request at INFO; on stdio only stderr is free, and it is the client's.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        server = build_server()
    except ImportError as exc:
        print(
            f"virsh-sandbox-mcp needs the mcp package: pip install 'virsh-sandbox[mcp]' ({exc})",
            file=sys.stderr,
        )
        return 1
    server.run("stdio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
