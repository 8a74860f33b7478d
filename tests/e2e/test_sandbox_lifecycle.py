"""An agent's whole day through the HTTP API on real VMs: create from debian-base, run
commands, stop, start again, destroy, and nothing left behind. Two sandboxes share the module
so that one can prove a certificate for the other does not open it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings

from sandboxes.models import TRANSITIONAL_STATES, Operation, Sandbox
from sandboxes.remote import ssh
from sandboxes.remote.ca import CertificateAuthority

# django_db: makes pytest-django create the test database; data the module shares is
# written outside the per-test transaction (see conftest.e2e_stack).
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def sandboxes(e2e_stack):
    """Two ready sandboxes of alice's, created at once (the second without waiting)."""
    t0 = time.monotonic()
    status_b, body_b = e2e_stack.alice.post(
        "/v1/sandboxes", {"source_vm_name": "debian-base", "agent_id": "e2e-b"}
    )
    assert status_b == 202, body_b
    status_a, body_a = e2e_stack.alice.post(
        "/v1/sandboxes", {"source_vm_name": "debian-base", "agent_id": "e2e-a", "wait_for_ip": True}
    )
    created_in = time.monotonic() - t0
    assert status_a == 201, body_a
    op_b = e2e_stack.alice.wait_operation(body_b["operation"]["id"])
    assert op_b["status"] == "succeeded", op_b
    a, b = (
        body_a["sandbox"],
        e2e_stack.alice.get(f"/v1/sandboxes/{body_b['sandbox']['id']}")[1]["sandbox"],
    )
    print(f"\ncreate-to-ready with wait_for_ip: {created_in:.1f} s")
    yield {"a": a, "b": b, "created_in": created_in}
    for sb in (a, b):
        status, body = e2e_stack.alice.get(f"/v1/sandboxes/{sb['id']}")
        if body["sandbox"]["state"] not in ("destroyed", "destroying"):
            e2e_stack.alice.delete(f"/v1/sandboxes/{sb['id']}")


def test_it_creates_a_ready_sandbox_with_a_pinned_host_key(sandboxes):
    a = sandboxes["a"]
    assert a["state"] == "ready"
    assert a["ssh_host"] == "127.0.0.1" and a["ssh_port"]
    assert a["host_key"].startswith("ssh-ed25519 ")
    assert a["host_key"] != sandboxes["b"]["host_key"], "each clone must get its own host key"
    state = virsh("domstate", a["name"]).stdout.strip()
    assert state == "running"


def test_it_runs_uname(e2e_stack, sandboxes):
    cmd = e2e_stack.alice.run(sandboxes["a"]["id"], "uname -a")
    assert cmd["exit_code"] == 0
    assert cmd["stdout"].startswith("Linux ")
    assert cmd["stderr"] == ""
    assert cmd["status"] == "finished" and cmd["timed_out"] is False


def test_it_keeps_stdout_and_stderr_apart_and_reports_the_exit_code(e2e_stack, sandboxes):
    cmd = e2e_stack.alice.run(sandboxes["a"]["id"], "echo to-out; echo to-err >&2; exit 3")
    assert cmd["exit_code"] == 3
    assert cmd["stdout"] == "to-out\n"
    assert cmd["stderr"] == "to-err\n"


def test_it_passes_a_multiline_script_with_both_quotes_intact(e2e_stack, sandboxes):
    script = (
        "greeting='it'\"'\"'s \"quoted\"'\n"
        'echo "$greeting"\n'
        "cat <<'EOF'\n"
        "literal $HOME and 'single' and \"double\"\n"
        "EOF\n"
        "printf '%s\\n' \"tab\there\"\n"
    )
    cmd = e2e_stack.alice.run(sandboxes["a"]["id"], script)
    assert cmd["exit_code"] == 0, cmd
    assert cmd["stdout"] == (
        'it\'s "quoted"\nliteral $HOME and \'single\' and "double"\ntab\there\n'
    )


def test_it_applies_env_and_working_directory(e2e_stack, sandboxes):
    cmd = e2e_stack.alice.run(
        sandboxes["a"]["id"],
        'echo "$GREETING from $(pwd)"',
        env={"GREETING": "hello 'world'"},
        cwd="/etc",
    )
    assert cmd["stdout"] == "hello 'world' from /etc\n"


def test_it_times_out_and_returns_the_partial_output(e2e_stack, sandboxes):
    t0 = time.monotonic()
    cmd = e2e_stack.alice.run(
        sandboxes["a"]["id"], "echo before; sleep 60; echo after", timeout_seconds=3
    )
    assert time.monotonic() - t0 < 20
    assert cmd["timed_out"] is True and cmd["status"] == "timed_out"
    assert cmd["exit_code"] is None
    assert cmd["stdout"] == "before\n"
    leftover = e2e_stack.alice.run(sandboxes["a"]["id"], "pgrep -f 'sleep [6]0' || true")
    assert leftover["stdout"] == "", "the timed-out command must not keep running"


def test_it_caps_output_and_flags_truncation(e2e_stack, sandboxes):
    cmd = e2e_stack.alice.run(
        sandboxes["a"]["id"], "head -c 200000 /dev/zero | tr '\\0' x; echo done >&2"
    )
    assert cmd["exit_code"] == 0
    assert cmd["stdout_truncated"] is True
    assert len(cmd["stdout"]) == 65536
    assert cmd["stderr"] == "done\n" and cmd["stderr_truncated"] is False


def test_it_keeps_the_command_history(e2e_stack, sandboxes):
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{sandboxes['a']['id']}/commands")
    assert status == 200
    commands = [c["command"] for c in body["results"]]
    assert "uname -a" in commands


def test_it_refuses_bad_input_through_the_real_server(e2e_stack, sandboxes):
    api = e2e_stack.alice
    assert api.post("/v1/sandboxes", {"source_vm_name": "debian-base", "memory_mb": 0})[0] == 400
    status, body = api.request("POST", "/v1/sandboxes", raw=b"{oops")
    assert status == 400 and body["error"]["code"] == "parse_error"
    status, body = api.post(f"/v1/sandboxes/{sandboxes['a']['id']}/command", {"command": ""})
    assert status == 400 and "command" in body["error"]["fields"]
    assert e2e_stack.bob.get(f"/v1/sandboxes/{sandboxes['a']['id']}")[0] == 404
    assert e2e_stack.anonymous.get("/v1/sandboxes")[0] == 401


def _connect(sandbox, principals, **issue):
    ca = CertificateAuthority(settings.VSB["SSH_CA_KEY"])
    credential = ca.issue(principals, **issue)
    target = ssh.SSHTarget("127.0.0.1", sandbox["ssh_port"], "root", sandbox["host_key"])
    return ssh.connect(target, credential, timeout=10)


def test_it_opens_a_sandbox_only_with_a_certificate_for_its_own_principal(sandboxes):
    a, b = sandboxes["a"], sandboxes["b"]
    client = _connect(a, [f"sandbox-{a['id'].replace('-', '')}"])
    client.close()
    with pytest.raises(ssh.AuthError):
        _connect(b, [f"sandbox-{a['id'].replace('-', '')}"])


def test_it_refuses_an_expired_certificate(sandboxes):
    a = sandboxes["a"]
    ca_key = settings.VSB["SSH_CA_KEY"]
    tmp = Path(f"/tmp/vsb-expired-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "id")], check=True
        )
        principal = f"sandbox-{a['id'].replace('-', '')}"
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-s",
                ca_key,
                "-I",
                "expired",
                "-n",
                principal,
                "-V",
                "-20m:-10m",
                str(tmp / "id.pub"),
            ],
            check=True,
        )
        import paramiko

        key = paramiko.Ed25519Key.from_private_key_file(str(tmp / "id"))
        key.load_certificate(str(tmp / "id-cert.pub"))
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        with pytest.raises(paramiko.AuthenticationException):
            client.connect(
                "127.0.0.1",
                port=a["ssh_port"],
                username="root",
                pkey=key,
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
        client.close()
    finally:
        subprocess.run(["rm", "-rf", str(tmp)])


def test_it_stops_and_starts_again_with_the_same_disk_and_host_key(e2e_stack, sandboxes):
    a = sandboxes["a"]
    api = e2e_stack.alice
    api.run(a["id"], "echo persisted > /root/marker; sync")
    status, body = api.post(f"/v1/sandboxes/{a['id']}/stop", {"wait": True})
    assert status == 200, body
    assert body["sandbox"]["state"] == "stopped"
    assert virsh("domstate", a["name"]).stdout.strip() == "shut off"
    status, body = api.post(f"/v1/sandboxes/{a['id']}/command", {"command": "true"})
    assert status == 409
    status, body = api.post(f"/v1/sandboxes/{a['id']}/start", {"wait_for_ip": True})
    assert status == 200, body
    assert body["sandbox"]["state"] == "ready"
    assert body["sandbox"]["host_key"] == a["host_key"]
    assert api.run(a["id"], "cat /root/marker")["stdout"] == "persisted\n"


def test_it_destroys_both_and_leaves_no_domain_disk_or_transitional_row(e2e_stack, sandboxes):
    api = e2e_stack.alice
    ops = []
    for sb in (sandboxes["a"], sandboxes["b"]):
        status, body = api.delete(f"/v1/sandboxes/{sb['id']}")
        assert status == 202, body
        ops.append(body["operation"]["id"])
    for op_id in ops:
        assert api.wait_operation(op_id)["status"] == "succeeded"
    for sb in (sandboxes["a"], sandboxes["b"]):
        assert virsh("dominfo", sb["name"]).returncode != 0, f"{sb['name']} still defined"
        assert not Path(settings.VSB["SANDBOX_DIR"], sb["name"]).exists()
        assert api.get(f"/v1/sandboxes/{sb['id']}")[1]["sandbox"]["state"] == "destroyed"
    with e2e_stack.blocker.unblock():
        assert not Sandbox.objects.filter(state__in=TRANSITIONAL_STATES).exists()
        assert not Operation.objects.filter(status__in=["pending", "running"]).exists()
    image = Path(os.environ.get("VSB_TEST_IMAGE_DIR", "/nonexistent")) / "base.qcow2"
    if image.parent.exists():
        assert image.exists(), "destroy must never remove the backing image"
