"""Test doubles for the SDK's unit ring: an httpx handler that plays the command API by
running each command in a real local shell, so the SDK's guest scripts (files, streaming)
are exercised for real without a VM."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import httpx


class LocalShellServer:
    """``POST /v1/sandboxes/{id}/command`` runs ``command`` with bash in ``root`` (as the
    guest's login shell would), honouring env, cwd and an output cap like the server's.
    Every request is recorded."""

    def __init__(self, root: Path, output_limit: int = 1024 * 1024) -> None:
        self.root = root
        self.output_limit = output_limit
        self.requests: list[httpx.Request] = []
        self.commands: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST" and request.url.path.endswith("/command"):
            body = json.loads(request.content)
            self.commands.append(body["command"])
            env = {**os.environ, "SHELL": "/bin/bash", **body.get("env", {})}
            proc = subprocess.run(
                ["/bin/bash", "-c", body["command"]],
                cwd=body.get("cwd") or self.root,
                env=env,
                capture_output=True,
                timeout=60,
            )
            out, err = proc.stdout, proc.stderr
            return httpx.Response(
                200,
                json={
                    "command": {
                        "id": str(uuid.uuid4()),
                        "command": body["command"],
                        "status": "finished",
                        "exit_code": proc.returncode,
                        "stdout": out[: self.output_limit].decode("utf-8", "replace"),
                        "stderr": err[: self.output_limit].decode("utf-8", "replace"),
                        "stdout_truncated": len(out) > self.output_limit,
                        "stderr_truncated": len(err) > self.output_limit,
                        "timed_out": False,
                    }
                },
            )
        return httpx.Response(404, text="<html><title>Not Found</title></html>")


def error(status: int, code: str, message: str, fields: dict | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"code": code, "message": message, "fields": fields or {}}}
    )


def sandbox_json(
    sandbox_id: str = "5f0c3a52-4a59-4be4-9f5c-2f0a5b1c9d11", state: str = "ready"
) -> dict:
    return {
        "id": sandbox_id,
        "name": "sb-5f0c3a52",
        "agent_id": "tester",
        "state": state,
        "source_vm_name": "debian-base",
        "vcpus": 1,
        "memory_mb": 256,
        "ssh_host": "127.0.0.1",
        "ssh_port": 44001,
    }


def operation_json(
    status: str = "succeeded", op_id: str = "0c6f1a8e-8a41-4a43-8d38-8b1f2c3d4e5f", **kw
) -> dict:
    return {"id": op_id, "kind": kw.pop("kind", "create"), "status": status, "progress": 100, **kw}


def approved_json(request_id: str = "r1", decided_by: str = "olivia") -> dict:
    """An approval request as the server answers once an operator approved it."""
    return {
        "request_id": request_id,
        "status": "approved",
        "approved": True,
        "decided_by": decided_by,
    }


GRANT_APPROVAL = "7d1e9f1c-3b7a-4c55-9a43-6e2b1f0a8c21"


def egress_approval_json(status: str = "pending", **kw) -> dict:
    """The approval an egress request opens (server-reserved action `egress_grant`)."""
    return {
        "id": GRANT_APPROVAL,
        "status": status,
        "action_type": "egress_grant",
        "sandbox_id": sandbox_json()["id"],
        "payload": {"host": "pypi.org", "port": 443, "ttl_seconds": 600},
        **kw,
    }


def egress_policy_json(*grants: str) -> dict:
    """A policy with the settings' default rule, plus a grant made by each approval id given."""
    rules = [
        {"rule": "deb.debian.org:80", "source": "settings", "expires_at": None, "approval_id": None}
    ]
    rules += [
        {
            "rule": "pypi.org:443",
            "source": "grant",
            "expires_at": "2026-12-03T11:00:00Z",
            "approval_id": approval_id,
        }
        for approval_id in grants
    ]
    return {
        "enabled": True,
        "proxy": "http://10.0.2.100:3128",
        "rules": rules,
        "always_denied": ["127.0.0.0/8 (loopback)", "the KVM host's own addresses"],
    }


def egress_connection_json(allowed: bool = False, **kw) -> dict:
    return {
        "id": 7,
        "sandbox_id": sandbox_json()["id"],
        "host": "evil.example",
        "port": 443,
        "allowed": allowed,
        "rule": "grant pypi.org:443" if allowed else "not in policy",
        "address": "",
        "bytes_up": 0,
        "bytes_down": 0,
        "started_at": "2026-12-03T10:00:00Z",
        "duration_ms": 3,
        "error": "",
        **kw,
    }
