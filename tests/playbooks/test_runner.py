"""Who runs Ansible: ansible-playbook templates playbooks and runs lookups on the controller,
so it runs as the unprivileged vsb-ansible user, in its own PID and mount namespace with the
service's secrets covered, a clean environment and only its own run's credentials, never in
the worker. Real ansible-runner against a real sshd on loopback (it plays the target)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from playbooks import runner, runtime
from tests.support.sshd import start_sshd

PRINCIPAL = "playbook-target"


@pytest.fixture(scope="module")
def target_sshd(tmp_path_factory):
    sshd = start_sshd(tmp_path_factory.mktemp("target"), PRINCIPAL, extra_config=["MaxSessions 20"])
    try:
        yield sshd
    finally:
        sshd.stop()


@pytest.fixture
def target(target_sshd, tmp_path) -> runner.Target:
    cred = target_sshd.ca.issue([PRINCIPAL])
    remote_tmp = tmp_path / "remote-tmp"
    remote_tmp.mkdir()
    return runner.Target(
        name="loopback",
        host="127.0.0.1",
        port=target_sshd.port,
        user="root",
        host_key=target_sshd.host_key_line,
        private_key=cred.private_key,
        certificate=cred.certificate,
        variables={"ansible_remote_tmp": str(remote_tmp)},
    )


@pytest.fixture
def secrets_dir():
    """A stand-in for the CA key's directory that file modes would NOT protect (0755, key
    0644): only the namespace keeps it from Ansible."""
    path = Path(tempfile.mkdtemp(prefix="vsb-test-ca-", dir="/tmp"))
    path.chmod(0o755)
    key = path / "ca"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5IGJ1dCBhIHNlY3JldA==\n")
    key.chmod(0o644)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def isolation(settings, target_sshd, secrets_dir):
    """The isolation the service builds from its settings, with the loopback CA's key as the
    service's CA key and a run root of this test's own."""
    run_root = f"/run/virsh-sandbox/ansible-test-{uuid.uuid4().hex[:8]}"
    settings.VSB = {
        **settings.VSB,
        "SSH_CA_KEY": target_sshd.ca_key_path,
        "ANSIBLE_RUN_DIR": run_root,
        "ANSIBLE_HIDE": [str(secrets_dir)],
    }
    yield runtime.ansible_isolation()
    shutil.rmtree(run_root, ignore_errors=True)


def collect(isolation, yaml_text, targets, **kw):
    events: list[dict] = []
    result = runner.run(yaml_text, {}, targets, isolation=isolation, on_event=events.append, **kw)
    return result, events


def task_result(events, task: str, kind: str = "runner_on_ok") -> dict:
    found = [e for e in events if e.get("event") == kind and e["event_data"].get("task") == task]
    assert found, [(e.get("event"), e.get("event_data", {}).get("task")) for e in events]
    return found[0]["event_data"]["res"]


def test_ansible_runs_unprivileged_and_cannot_read_the_ca_key(
    isolation, target, target_sshd, secrets_dir
):
    ca_key = target_sshd.ca_key_path
    planted = secrets_dir / "ca"
    sibling = Path(isolation.run_root) / "run-sibling"  # another run's directory, readable by modes
    sibling.mkdir(parents=True, mode=0o755)
    (sibling / "id0").write_text("another run's key\n")
    playbook = f"""
- hosts: all
  gather_facts: false
  tasks:
  - name: Who runs the controller
    ansible.builtin.debug:
      msg:
        uid: "{{{{ lookup('pipe', 'id -u') }}}}"
        gid: "{{{{ lookup('pipe', 'id -g') }}}}"
        env: "{{{{ lookup('pipe', 'env') }}}}"
        root_home: "{{{{ lookup('pipe', 'ls -A /root') }}}}"
        data_dir: "{{{{ lookup('pipe', 'ls -A {runtime.settings.DATA_DIR} || true') }}}}"
        processes: "{{{{ lookup('pipe', 'ls /proc | grep -c ^[0-9]') }}}}"
        runs: "{{{{ lookup('pipe', 'ls -A {isolation.run_root}') }}}}"
  - name: Read the CA key
    ansible.builtin.debug:
      msg: "{{{{ lookup('file', '{ca_key}') }}}}"
    ignore_errors: true
  - name: Cat the CA key
    ansible.builtin.debug:
      msg: "{{{{ lookup('pipe', 'cat {ca_key}') }}}}"
    ignore_errors: true
  - name: Read a key that file modes would not protect
    ansible.builtin.debug:
      msg: "{{{{ lookup('file', '{planted}') }}}}"
    ignore_errors: true
  - name: On the target
    ansible.builtin.command: id -un
"""
    result, events = collect(isolation, playbook, [target])
    assert result.status == "successful", (result, events[-3:])

    facts = task_result(events, "Who runs the controller")["msg"]
    account = pwd.getpwnam("vsb-ansible")
    assert int(facts["uid"]) == account.pw_uid != 0 and int(facts["gid"]) == account.pw_gid != 0
    env = dict(line.split("=", 1) for line in facts["env"].splitlines() if "=" in line)
    assert not {
        "DATABASE_URL",
        "DJANGO_SETTINGS_MODULE",
        "TEST_REDIS_URL",
        "SECRET_KEY",
        "VSB_SANDBOX_DIR",
    } & set(env)
    assert env["HOME"].startswith(isolation.run_root + "/run-") and env["USER"] == "vsb-ansible"
    assert set(facts["root_home"].split()) <= {".pyenv"}  # only the Python installation shows
    assert facts["data_dir"] == ""
    assert int(facts["processes"]) < 20  # its own PID namespace: the worker is not there
    assert facts["runs"].startswith("run-") and facts["runs"] != "run-sibling"  # only its own run

    st = os.stat(ca_key)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    for task in (
        "Read the CA key",
        "Cat the CA key",
        "Read a key that file modes would not protect",
    ):
        task_result(events, task, "runner_on_failed")
    secret = Path(ca_key).read_text().splitlines()[1]
    everything = json.dumps(events)
    assert secret not in everything and "bm90IGEga2V5IGJ1dCBhIHNlY3JldA" not in everything
    assert (
        task_result(events, "On the target")["stdout"] == "root"
    )  # the run's own credentials work
    assert os.listdir(isolation.run_root) == ["run-sibling"]  # its own directory is gone


def test_events_stream_in_order_and_a_failure_names_its_task(isolation, target):
    playbook = """
- hosts: all
  gather_facts: false
  tasks:
  - name: First
    ansible.builtin.command: "true"
  - name: Breaks
    ansible.builtin.command: /bin/false
  - name: Never runs
    ansible.builtin.command: "true"
"""
    result, events = collect(isolation, playbook, [target])
    assert result.status == "failed" and result.rc != 0
    assert (
        result.failed_tasks[0]["task"] == "Breaks" and result.failed_tasks[0]["host"] == "loopback"
    )
    assert (result.hosts["loopback"].ok, result.hosts["loopback"].failed) == (1, 1)
    counters = [e["counter"] for e in events]
    assert counters == sorted(counters) and len(events) == result.events > 5
    assert events[-1]["event"] == "playbook_on_stats"
    assert not any(e.get("event_data", {}).get("task") == "Never runs" for e in events)
    assert os.listdir(isolation.run_root) == []


def test_a_cancelled_run_stops_and_leaves_nothing_behind(isolation, target):
    playbook = """
- hosts: all
  gather_facts: false
  tasks:
  - name: A long step
    ansible.builtin.command: sleep 40
"""
    state = {"started": None}

    def on_event(event):
        if event.get("event") == "runner_on_start" and state["started"] is None:
            state["started"] = time.monotonic()

    def cancelled() -> bool:
        return state["started"] is not None and time.monotonic() - state["started"] > 2

    result = runner.run(
        playbook, {}, [target], isolation=isolation, on_event=on_event, cancelled=cancelled
    )
    assert result.status == "canceled"
    assert time.monotonic() - state["started"] < 25
    assert os.listdir(isolation.run_root) == []
    leftovers = [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and _owned_by(p, "vsb-ansible") and isolation.run_root in _cmdline(p)
    ]
    assert leftovers == []


def _owned_by(pid: str, user: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam(user).pw_uid
    except FileNotFoundError:
        return False


def _cmdline(pid: str) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def test_a_playbook_file_name_that_leaves_files_is_refused(isolation, target):
    with pytest.raises(ValueError, match="not a file name"):
        runner.run(
            "- hosts: all\n  tasks: []\n", {"../../keys/id0": b"x"}, [target], isolation=isolation
        )
    assert os.listdir(isolation.run_root) == []


def test_without_its_system_user_ansible_does_not_run(target, tmp_path):
    missing = runner.Isolation(user="vsb-no-such-user", run_root=str(tmp_path / "runs"))
    with pytest.raises(runner.RunnerError, match="install-system.sh"):
        runner.run("- hosts: all\n  tasks: []\n", {}, [target], isolation=missing)


def test_a_pinned_host_key_cannot_add_known_hosts_lines(target):
    """The host key of a sandbox target was read from its (hostile) guest."""
    target.host_key = (
        target.host_key + "\n[10.0.0.1]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAttacker"
    )
    line = runner._known_host(target)
    assert line.count("\n") == 1 and "Attacker" not in line
    target.host = "127.0.0.1 evil"
    with pytest.raises(ValueError):
        runner._known_host(target)


def test_the_syntax_check_runs_as_the_ansible_user_too(isolation):
    """An operator's edit may hold Jinja in a play's name, which --syntax-check templates."""
    from playbooks.runtime import syntax_check

    seen = Path(f"/tmp/vsb-test-syntax-{uuid.uuid4().hex}")
    try:
        ok, output = syntax_check(
            f"- name: \"{{{{ lookup('pipe', 'id -u > {seen}') }}}}\"\n  hosts: all\n  tasks: []\n",
            {},
        )
        assert ok, output
        assert int(seen.read_text()) == pwd.getpwnam("vsb-ansible").pw_uid
    finally:
        seen.unlink(missing_ok=True)
    assert os.listdir(isolation.run_root) == []
