"""The `virsh-sandbox` command line against a mock transport: output, --json, exit codes,
progress on stderr and the server's error messages."""

from __future__ import annotations

import json

import httpx
import pytest
from virsh_sandbox import VirshSandbox, cli

from tests.sdk.fakes import error, operation_json, sandbox_json
from tests.sdk.test_client import Recorder

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
