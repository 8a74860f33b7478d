"""The `virsh-sandbox` command line against a mock transport: output, --json, exit codes,
progress on stderr and the server's error messages."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from virsh_sandbox import VirshSandbox, cli

from tests.sdk.fakes import (
    GRANT_APPROVAL,
    egress_approval_json,
    egress_connection_json,
    egress_policy_json,
    error,
    operation_json,
    sandbox_json,
)
from tests.sdk.test_client import EGRESS, Recorder, egress_server

SB = sandbox_json()["id"]


@pytest.fixture
def serve(monkeypatch):
    """Point the CLI's client at a Recorder built from the given routes."""

    def install(routes) -> Recorder:
        rec = Recorder(routes)

        def factory(url, **kw):
            return VirshSandbox(url, transport=httpx.MockTransport(rec), backoff=0, **kw)

        monkeypatch.setattr(cli, "VirshSandbox", factory)
        return rec

    return install


def test_it_lists_sandboxes_as_a_table_or_json(serve, capsys):
    serve(
        {
            ("GET", "/v1/sandboxes"): httpx.Response(
                200, json={"count": 1, "results": [sandbox_json()]}
            )
        }
    )
    assert cli.main(["--url", "http://x", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "NAME", "STATE", "AGENT", "SOURCE", "CREATED"]
    assert out[1].split()[:5] == [SB, "sb-5f0c3a52", "ready", "tester", "debian-base"]

    # --json before or after the command.
    for argv in (["--json", "list"], ["list", "--json"]):
        assert cli.main(["--url", "http://x", *argv]) == 0
        body = json.loads(capsys.readouterr().out)
        assert body["total"] == 1 and body["sandboxes"][0]["id"] == SB


def test_exec_prints_the_streams_apart_and_exits_with_the_commands_code(serve, capsys):
    rec = serve(
        {
            ("POST", "/command"): httpx.Response(
                200,
                json={
                    "command": {
                        "exit_code": 3,
                        "stdout": "out\n",
                        "stderr": "err\n",
                        "timed_out": False,
                    }
                },
            )
        }
    )
    code = cli.main(
        [
            "--url",
            "http://x",
            "--api-key",
            "vsb_k",
            "exec",
            SB,
            "--env",
            "A=1",
            "--",
            "ls",
            "-la",
            "/",
        ]
    )
    captured = capsys.readouterr()
    assert code == 3
    assert captured.out == "out\n" and "err\n" in captured.err
    assert json.loads(rec.requests[0].content) == {"command": "ls -la /", "env": {"A": "1"}}
    assert rec.requests[0].headers["authorization"] == "Bearer vsb_k"

    assert cli.main(["--url", "http://x", "exec", "--json", SB, "true"]) == 3
    assert json.loads(capsys.readouterr().out)["command"]["stdout"] == "out\n"


def test_exec_exits_124_when_the_command_timed_out(serve, capsys):
    serve(
        {
            ("POST", "/command"): httpx.Response(
                200,
                json={
                    "command": {
                        "exit_code": None,
                        "stdout": "",
                        "stderr": "",
                        "timed_out": True,
                        "timeout_seconds": 1,
                    }
                },
            )
        }
    )
    assert cli.main(["--url", "http://x", "exec", SB, "sleep 5"]) == 124
    assert "timed out after 1s" in capsys.readouterr().err


def test_it_shows_the_servers_message_and_fails(serve, capsys):
    serve(
        {
            ("POST", "/command"): error(
                409, "invalid_state", "Sandbox sb-1 is stopped; commands need it ready."
            )
        }
    )
    assert cli.main(["--url", "http://x", "exec", SB, "true"]) == 1
    assert (
        "virsh-sandbox: error: Sandbox sb-1 is stopped; commands need it ready."
        in capsys.readouterr().err
    )

    serve(
        {
            ("POST", "/v1/sandboxes"): error(
                400, "invalid", "memory_mb: too big", {"memory_mb": ["too big"]}
            )
        }
    )
    assert (
        cli.main(["--url", "http://x", "--json", "create", "debian-base", "--memory-mb", "999999"])
        == 1
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["fields"] == {"memory_mb": ["too big"]}
    assert "  memory_mb: too big" in captured.err


def test_create_shows_the_operations_progress_on_stderr(serve, capsys):
    progress = [
        ("pending", 0, "queued"),
        ("running", 30, "cloning"),
        ("running", 70, "waiting for SSH"),
        ("succeeded", 100, "ready"),
    ]
    serve(
        {
            ("POST", "/v1/sandboxes"): httpx.Response(
                202,
                json={
                    "sandbox": sandbox_json(state="requested"),
                    "operation": operation_json("pending"),
                },
            ),
            ("GET", "/v1/operations/0c6f1a8e-8a41-4a43-8d38-8b1f2c3d4e5f"): lambda r: (
                httpx.Response(
                    200,
                    json=operation_json(
                        progress[0][0], progress=progress[0][1], message=progress.pop(0)[2]
                    ),
                )
            ),
            ("GET", f"/v1/sandboxes/{SB}"): httpx.Response(200, json={"sandbox": sandbox_json()}),
        }
    )
    assert cli.main(["--url", "http://x", "create", "debian-base", "--agent-id", "me"]) == 0
    captured = capsys.readouterr()
    assert "state:   ready" in captured.out and "ssh:     127.0.0.1:44001" in captured.out
    lines = captured.err.splitlines()
    assert "creating sb-5f0c3a52: cloning [30%]" in lines
    assert "creating sb-5f0c3a52: waiting for SSH [70%]" in lines
    assert lines[-1].startswith("creating sb-5f0c3a52: done in ")


def test_diff_prints_changes_one_per_line(serve, capsys):
    diff = {
        "from": "before",
        "to": "now",
        "summary": {"files": {"added": 1, "modified": 1}},
        "files": {
            "count": 2,
            "results": [
                {"change": "added", "path": "/etc/webapp/webapp.env"},
                {"change": "modified", "path": "/etc/passwd", "unified_diff": "-a\n+b\n"},
            ],
        },
        "packages": {"installed": [{"name": "vsb-hello", "version": "1.0"}]},
        "units": {"enabled": [{"name": "webapp.service"}]},
        "users": {},
        "groups": {},
        "commands": [{"command": "useradd bob", "exit_code": 0}],
    }
    rec = serve({("GET", "/diff"): httpx.Response(200, json={"diff": diff})})
    assert cli.main(["--url", "http://x", "-q", "diff", SB, "--from", "before", "-u"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "diff before -> now: files added=1 modified=1"
    assert out[1:5] == ["A /etc/webapp/webapp.env", "M /etc/passwd", "-a", "+b"]
    assert "package installed: vsb-hello 1.0" in out and "unit enabled: webapp.service" in out
    assert "$ useradd bob  (exit 0)" in out
    assert dict(rec.requests[0].url.params) == {"from": "before"}


def test_playbook_reports_a_server_without_the_endpoint(serve, capsys):
    serve({})
    assert cli.main(["--url", "http://x", "-q", "playbook", SB, "--from", "before"]) == 1
    assert "has no route GET" in capsys.readouterr().err


def test_network_request_waits_for_the_decision_and_exits_by_it(serve, capsys, quick_polls):
    rec = serve(egress_server(egress_approval_json("approved", decided_by="olivia")).routes)
    argv = ["--url", "http://x", "network", "request", SB, "pypi.org", "--reason", "pip"]
    assert cli.main([*argv, "--ttl", "600", "--wait"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "allowed: grant pypi.org:443\n"
    assert "asking an operator for pypi.org:443: done in " in captured.err
    assert json.loads(rec.requests[0].content) == {
        "host": "pypi.org",
        "port": 443,
        "reason": "pip",
        "ttl_seconds": 600,
    }

    serve(egress_server(egress_approval_json("denied", decided_by="olivia", reason="no")).routes)
    assert cli.main([*argv, "--wait", "-q"]) == 1
    assert capsys.readouterr().out == "denied by olivia: no\n"


def test_network_request_without_wait_reports_the_pending_approval(serve, capsys):
    rec = serve(egress_server().routes)
    assert cli.main(["--url", "http://x", "network", "request", SB, "pypi.org:8443"]) == 0
    assert f"pending: approval {GRANT_APPROVAL} waits for an operator" in capsys.readouterr().out
    assert json.loads(rec.requests[0].content) == {"host": "pypi.org", "port": 8443}

    assert cli.main(["--url", "http://x", "--json", "network", "request", SB, "pypi.org"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["allowed"] is False and body["approval"]["status"] == "pending"


@pytest.mark.parametrize(
    "target, expected",
    [
        ("pypi.org", ("pypi.org", 443)),
        ("pypi.org:8080", ("pypi.org", 8080)),
        ("[2001:db8::1]:80", ("2001:db8::1", 80)),
        ("2001:db8::1", ("2001:db8::1", 443)),
    ],
)
def test_host_and_port_are_read_as_host_colon_port(target, expected):
    assert cli.parse_host_port(target) == expected


def test_a_port_that_is_not_a_number_is_refused():
    with pytest.raises(SystemExit, match="expected HOST\\[:PORT\\], got 'pypi.org:https'"):
        cli.parse_host_port("pypi.org:https")


def test_network_policy_prints_the_rules_as_a_table(serve, capsys):
    serve({("GET", EGRESS): httpx.Response(200, json=egress_policy_json(GRANT_APPROVAL))})
    assert cli.main(["--url", "http://x", "network", "policy", SB]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "egress enabled, proxy http://10.0.2.100:3128"
    assert out[1].split() == ["RULE", "SOURCE", "EXPIRES", "APPROVAL"]
    assert out[2].split() == ["deb.debian.org:80", "settings", "-", "-"]
    assert out[3].split() == ["pypi.org:443", "grant", "2026-12-03T11:00:00Z", GRANT_APPROVAL]
    assert out[4].startswith("always denied: 127.0.0.0/8 (loopback)")


def test_network_log_lists_connections_and_filters_the_denied(serve, capsys):
    rec = serve(
        {
            ("GET", EGRESS + "/log"): httpx.Response(
                200,
                json={
                    "count": 2,
                    "next": f"http://x{EGRESS}/log?allowed=false&limit=1&cursor=c2",
                    "results": [egress_connection_json(error="not in policy")],
                },
            )
        }
    )
    assert cli.main(["--url", "http://x", "network", "log", SB, "--denied", "--limit", "1"]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].split() == ["STARTED", "TARGET", "VERDICT", "RULE", "UP/DOWN", "TIME", "ERROR"]
    assert re.split(r"\s{2,}", out[1]) == [
        "2026-12-03T10:00:00Z",
        "evil.example:443",
        "denied",
        "not in policy",
        "0/0",
        "3ms",
        "not in policy",
    ]
    assert "(1 of 2; next page: --cursor c2)" in captured.err
    assert dict(rec.requests[0].url.params) == {"allowed": "false", "limit": "1"}
    argv = ["--url", "http://x", "network", "log", SB, "--denied", "--limit", "1"]
    assert cli.main([*argv, "--cursor", "c2"]) == 0
    capsys.readouterr()
    assert dict(rec.requests[1].url.params) == {"allowed": "false", "limit": "1", "cursor": "c2"}

    assert cli.main(["--url", "http://x", "network", "log", SB, "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["total"] == 2 and body["connections"][0]["host"] == "evil.example"
    assert "allowed" not in rec.requests[-1].url.params


def test_create_passes_each_allow_to_the_server(serve, capsys):
    rec = serve(
        {
            ("POST", "/v1/sandboxes"): httpx.Response(
                202, json={"sandbox": sandbox_json(state="requested")}
            )
        }
    )
    argv = ["create", "debian-base", "--no-wait", "--allow", "pypi.org", "--allow", "x.org:80"]
    assert cli.main(["--url", "http://x", *argv]) == 0
    assert json.loads(rec.requests[0].content)["egress_allow"] == ["pypi.org", "x.org:80"]


def test_progress_draws_a_bar_on_a_terminal_and_erases_a_transient_one():
    import io

    from virsh_sandbox.models import Operation

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with cli.Progress("creating sb-1", stream=screen) as progress:
        progress.update(Operation(status="running", progress=50, message="booting"))
    drawn = screen.getvalue()
    assert "creating sb-1 [##########..........]  50% booting" in drawn
    assert drawn.endswith("\r\033[Kcreating sb-1: done in 0.0s\n")

    screen = Terminal()
    with cli.Progress("running", stream=screen, transient=True):
        pass
    assert screen.getvalue().endswith("\r\033[K")  # nothing left on the line
    plain = io.StringIO()
    with cli.Progress("running", stream=plain, transient=True):
        pass
    assert plain.getvalue() == ""  # not a terminal: the command's own stderr stays clean
