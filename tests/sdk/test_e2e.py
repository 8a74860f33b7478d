"""The SDK, its CLI, its MCP server and the example agent against the real service: daphne,
a Celery worker with the libvirt driver, and QEMU guests booted from the project's image.

Three VMs in all: the original README's demo makes (and destroys) one, the example agent
another, and the rest of the tests share a third."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from virsh_sandbox import AsyncVirshSandbox, NotFound, VirshSandbox

from accounts import services as accounts
from tests.support.stack import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def api(e2e_stack):
    """(base URL, alice's key) of the running server."""
    return e2e_stack.alice.base_url, e2e_stack.alice.key


@pytest.fixture(scope="module")
def client(api):
    with VirshSandbox(api[0], api_key=api[1]) as c:
        yield c


@pytest.fixture(scope="module")
def sandbox(client):
    """One ready sandbox that the tests below share; destroyed at the end."""
    created = client.sandbox.create_sandbox(
        source_vm_name="debian-base", agent_id="sdk-e2e", wait_for_ip=True
    )
    assert created.sandbox.state == "ready", created
    yield created.sandbox
    client.sandbox.destroy_sandbox(created.sandbox.id)


@pytest.fixture(scope="module")
def operator_key(e2e_stack):
    """An operator's API key (the permission to decide approval requests)."""
    with e2e_stack.blocker.unblock():
        user, _ = User.objects.get_or_create(username="sdk-operator")
        user.user_permissions.add(Permission.objects.get(codename="decide_approvalrequest"))
        return accounts.create_api_key(user, "sdk-e2e")[1]


def test_the_original_readme_demo_runs_unchanged(api, e2e_stack, monkeypatch):
    url, key = api
    monkeypatch.setenv("VIRSH_SANDBOX_API_KEY", key)
    t0 = time.monotonic()
    # The original README's demo, line for line: its second URL (the old tmux-client) is
    # accepted and unused; the source VM is one that exists here, and the command runs
    # offline (the guest has no network).
    from virsh_sandbox import VirshSandbox

    from tests.sdk.readme_demo import run_readme_demo

    client = VirshSandbox(url, "http://localhost:8081")
    sandbox = run_readme_demo(client, "debian-base", "echo hello && uname -a")
    print(f"\nthe demo took {time.monotonic() - t0:.1f} s")

    # What the server saw, through its plain HTTP API.
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{sandbox.id}")
    assert status == 200 and body["sandbox"]["state"] == "destroyed", body
    assert body["sandbox"]["agent_id"] == "nginx-setup-agent"
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{sandbox.id}/commands")
    [command] = body["results"]
    assert command["command"] == "echo hello && uname -a" and command["exit_code"] == 0
    assert command["stdout"].startswith("hello\nLinux ")
    status, body = e2e_stack.alice.get(f"/v1/operations?sandbox={sandbox.id}")
    kinds = {op["kind"]: op["status"] for op in body["results"]}
    assert kinds == {"create": "succeeded", "snapshot": "succeeded", "destroy": "succeeded"}


def test_stream_command_yields_the_guests_output_while_it_runs(client, sandbox):
    script = "for i in 1 2 3; do echo line $i; sleep 1; done; echo oops >&2; exit 5"
    events, times = [], []
    for event in client.sandbox.stream_command(sandbox.id, script, poll_interval=0.2):
        events.append(event)
        times.append(time.monotonic())
    stdout = [(e.data, t) for e, t in zip(events, times, strict=True) if e.kind == "stdout"]
    assert "".join(d for d, _ in stdout) == "line 1\nline 2\nline 3\n"
    assert len(stdout) >= 2 and stdout[-1][1] - stdout[0][1] > 1.0, "output came in pieces, live"
    assert "".join(e.data for e in events if e.kind == "stderr") == "oops\n"
    assert (events[-1].kind, events[-1].exit_code) == ("exit", 5)
    # Nothing left behind in the guest.
    left = client.sandbox.run_sandbox_command(
        sandbox.id, "ls -d /tmp/vsb-stream.* 2>/dev/null | wc -l"
    )
    assert left.stdout.strip() == "0"


def test_files_round_trip_bytes_through_the_command_api(client, sandbox):
    blob = os.urandom(100_000) + b"\x00\r\n"
    client.files.write_file(sandbox.id, "/opt/sdk/blob.bin", blob, mode="0600", via="commands")
    assert client.files.read_file(sandbox.id, "/opt/sdk/blob.bin", via="commands").content == blob
    mode = client.sandbox.run_sandbox_command(sandbox.id, "stat -c %a /opt/sdk/blob.bin").stdout
    assert mode.strip() == "600"
    with pytest.raises(NotFound):
        client.files.read_file(sandbox.id, "/opt/sdk/missing", via="commands")


def test_files_round_trip_by_whichever_way_the_server_offers(client, sandbox):
    text = "port = 8080\nname = héllo\n"
    client.files.write_file(sandbox.id, "/etc/sdk-auto.conf", text)
    assert client.files.read_file(sandbox.id, "/etc/sdk-auto.conf").text == text
    cat = client.sandbox.run_sandbox_command(sandbox.id, "cat /etc/sdk-auto.conf")
    assert cat.stdout == text


def test_the_async_client_works_against_the_server(api, sandbox):
    async def go():
        async with AsyncVirshSandbox(api[0], api_key=api[1]) as c:
            got = await c.sandbox.get_sandbox(sandbox.id)
            ran = await c.sandbox.run_sandbox_command(sandbox.id, "echo async $((20+22))")
            return got, ran

    got, ran = asyncio.run(go())
    assert got.sandbox.id == sandbox.id and got.sandbox.state == "ready"
    assert ran.stdout == "async 42\n"


def cli(api, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIRSH_SANDBOX_URL": api[0], "VIRSH_SANDBOX_API_KEY": api[1]}
    return subprocess.run(
        [str(BIN / "virsh-sandbox"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_the_cli_execs_snapshots_and_diffs(api, sandbox):
    run = cli(api, "exec", sandbox.id, "echo out; echo err >&2; exit 7")
    assert (run.returncode, run.stdout, run.stderr) == (7, "out\n", "err\n"), run

    listed = cli(api, "--json", "list")
    assert listed.returncode == 0, listed.stderr
    assert sandbox.id in {s["id"] for s in json.loads(listed.stdout)["sandboxes"]}

    snap = cli(api, "snapshot", sandbox.id, "cli-before")
    assert snap.returncode == 0, snap.stderr
    assert "snapshot cli-before: ready" in snap.stdout
    assert "snapshot cli-before: done in" in snap.stderr  # progress went to stderr

    assert cli(api, "exec", sandbox.id, "echo from-cli > /etc/cli-marker").returncode == 0
    diff = cli(api, "diff", sandbox.id, "--from", "cli-before", "-u")
    assert diff.returncode == 0, diff.stderr
    assert "A /etc/cli-marker" in diff.stdout.splitlines() and "+from-cli" in diff.stdout

    missing = cli(api, "exec", "00000000-0000-0000-0000-000000000000", "true")
    assert missing.returncode == 1 and "virsh-sandbox: error: Not found." in missing.stderr


def test_an_mcp_client_lists_the_tools_and_works_in_a_sandbox(api, sandbox):
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=str(BIN / "virsh-sandbox-mcp"),
        args=["--url", api[0]],
        env={"VIRSH_SANDBOX_API_KEY": api[1]},
    )

    async def session_work():
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            ran = await session.call_tool(
                "run_command", {"sandbox_id": sandbox.id, "command": "echo mcp-$((6*7)); hostname"}
            )
            wrote = await session.call_tool(
                "write_file",
                {"sandbox_id": sandbox.id, "path": "/etc/mcp.conf", "content": "from = mcp\n"},
            )
            read_back = await session.call_tool(
                "read_file", {"sandbox_id": sandbox.id, "path": "/etc/mcp.conf"}
            )
            failed = await session.call_tool(
                "run_command",
                {"sandbox_id": "00000000-0000-0000-0000-000000000000", "command": "true"},
            )
            return tools, ran, wrote, read_back, failed

    from tests.sdk.test_mcp import TOOLS

    tools, ran, wrote, read_back, failed = asyncio.run(session_work())
    assert tools == TOOLS
    assert not ran.is_error, ran
    assert ran.structured_content["exit_code"] == 0
    assert ran.structured_content["stdout"].startswith("mcp-42\n")
    assert not wrote.is_error and wrote.structured_content["bytes_written"] == 11
    assert read_back.structured_content["content"] == "from = mcp\n"
    assert failed.is_error and "not_found" in failed.content[0].text


def test_the_example_agent_configures_a_web_service_end_to_end(api, operator_key, tmp_path):
    """The scripted agent, as a user runs it; an operator approves its change while it
    waits (the server has the approval endpoint), and the sandbox is gone afterwards."""
    report_path, playbook_path = tmp_path / "report.json", tmp_path / "webapp.yml"
    env = {**os.environ, "VIRSH_SANDBOX_API_KEY": api[1]}
    agent = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "agent_nginx.py"),
            "--url",
            api[0],
            "--report",
            str(report_path),
            "--playbook-out",
            str(playbook_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    operator = VirshSandbox(api[0], api_key=operator_key)
    approved = None
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and agent.poll() is None:
            pending = operator.approvals.list_approvals(status="pending").approvals
            if pending:
                [request] = pending
                approved = operator.approvals.approve(request.id, reason="looks right")
                break
            time.sleep(0.5)
        output, _ = agent.communicate(timeout=300)
    finally:
        if agent.poll() is None:
            agent.kill()
        operator.close()
    print(output)
    assert agent.returncode == 0, output
    assert approved is not None and approved.status == "approved", output
    assert "Apply the webapp service" in approved.prompt and approved.sandbox_id

    report = json.loads(report_path.read_text())
    assert report["answered"] == "<h1>Hello from webapp</h1>"
    assert {
        "/srv/webapp/index.html",
        "/etc/webapp/webapp.env",
        "/etc/systemd/system/webapp.service",
        "/etc/systemd/system/multi-user.target.wants/webapp.service",
    } <= set(report["changed_paths"])
    assert "webapp.service" in report["units_enabled"]
    assert report["approval"] == "approved"
    assert report["destroyed"] is True
    assert "[agent] approval: approved by sdk-operator" in output
    with VirshSandbox(api[0], api_key=api[1]) as client:
        assert client.sandbox.get_sandbox(report["sandbox_id"]).sandbox.state == "destroyed"
        has_playbooks = client.supports("GET", "/v1/sandboxes/{id}/playbook")
    if has_playbooks:
        # The exported playbook reproduces what the agent did.
        assert report["playbook"] == str(playbook_path)
        playbook = playbook_path.read_text()
        assert "/etc/webapp/webapp.env" in playbook and "webapp.service" in playbook, playbook
    else:
        assert report["playbook"].startswith("skipped") and not playbook_path.exists()


def test_terminals_type_and_read_through_the_sdk(client, sandbox):
    opened = client.tmux.create_session(sandbox.id, "sdk")
    pane = opened.pane["pane_id"]
    try:
        client.tmux.send_keys(sandbox.id, pane, "echo typed-$((40+2))", enter=True)
        deadline, screen = time.monotonic() + 30, ""
        while time.monotonic() < deadline and "typed-42" not in screen:
            screen = client.tmux.read_pane(sandbox.id, pane).content
            time.sleep(0.3)
        assert "typed-42" in screen, screen
        assert "sdk" in {s["name"] for s in client.tmux.list_sessions(sandbox.id).sessions}
    finally:
        client.tmux.kill_session(sandbox.id, "sdk")
