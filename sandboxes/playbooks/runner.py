"""Run a playbook with ansible-runner against hosts reached over SSH with a short-lived
certificate and a pinned host key. No Django: the caller passes targets and callbacks."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

ANSIBLE_BIN = os.path.dirname(sys.executable)


@dataclass
class Target:
    name: str  # inventory hostname
    host: str
    port: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA...": pinned, never learned
    private_key: str = field(repr=False)
    certificate: str = ""
    variables: dict = field(default_factory=dict)


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    ignored: int = 0


@dataclass
class RunResult:
    status: str  # successful, failed, canceled, timeout
    rc: int
    hosts: dict[str, HostStats]
    failed_tasks: list[dict]  # {host, task, message}
    changed_tasks: list[dict]  # {host, task}
    events: int

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())


def _known_host(target: Target) -> str:
    where = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    return f"{where} {target.host_key.strip()}\n"


def _write(path: str, text: str, mode: int = 0o600) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def run(
    yaml_text: str,
    files: dict[str, bytes],
    targets: list[Target],
    *,
    check: bool = False,
    on_event: Callable[[dict], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    timeout: int = 3600,
    workdir: str | None = None,
) -> RunResult:
    import ansible_runner

    base = tempfile.mkdtemp(prefix="vsb-ansible-", dir=workdir)
    os.chmod(base, 0o700)
    try:
        project = os.path.join(base, "project")
        os.makedirs(os.path.join(project, "files"))
        _write(os.path.join(project, "playbook.yml"), yaml_text, 0o644)
        for name, data in files.items():
            with open(os.path.join(project, "files", name), "wb") as f:
                f.write(data)
        keys = os.path.join(base, "keys")
        os.makedirs(keys, mode=0o700)
        hosts = {}
        for i, t in enumerate(targets):
            # OpenSSH refuses a key file whose last line has no newline.
            key = _write(os.path.join(keys, f"id{i}"), t.private_key.rstrip("\n") + "\n")
            cert = _write(os.path.join(keys, f"id{i}-cert.pub"), t.certificate + "\n")
            known = _write(os.path.join(keys, f"known{i}"), _known_host(t))
            hosts[t.name] = {
                "ansible_host": t.host,
                "ansible_port": t.port,
                "ansible_user": t.user,
                "ansible_ssh_private_key_file": key,
                "ansible_ssh_common_args": (
                    f"-o CertificateFile={cert} -o UserKnownHostsFile={known} "
                    "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o GlobalKnownHostsFile=/dev/null"
                ),
                "ansible_python_interpreter": "/usr/bin/python3",
                **t.variables,
            }
        failed_tasks: list[dict] = []
        changed_tasks: list[dict] = []
        count = 0

        def handler(event: dict) -> bool:
            nonlocal count
            count += 1
            data = event.get("event_data", {})
            kind = event.get("event")
            if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                res = data.get("res", {}) or {}
                failed_tasks.append({
                    "host": data.get("host"),
                    "task": data.get("task"),
                    "message": str(res.get("msg") or res.get("stderr") or res)[:2000],
                    "unreachable": kind == "runner_on_unreachable",
                })
            elif kind == "runner_on_ok" and (data.get("res") or {}).get("changed"):
                changed_tasks.append({"host": data.get("host"), "task": data.get("task")})
            if on_event:
                on_event(event)
            return True

        env = {
            "PATH": ANSIBLE_BIN + os.pathsep + os.environ.get("PATH", ""),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_LOCAL_TEMP": os.path.join(base, "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(base, "cp"),
        }
        result = ansible_runner.run(
            private_data_dir=base,
            playbook="playbook.yml",
            inventory={"all": {"hosts": hosts}},
            envvars=env,
            cmdline="--check --diff" if check else None,
            event_handler=handler,
            cancel_callback=cancelled or (lambda: False),
            quiet=True,
            timeout=timeout,
            ident="run",
        )
        stats = result.stats or {}
        per_host = {}
        for name in hosts:
            per_host[name] = HostStats(
                ok=stats.get("ok", {}).get(name, 0),
                changed=stats.get("changed", {}).get(name, 0),
                failed=stats.get("failures", {}).get(name, 0),
                unreachable=stats.get("dark", {}).get(name, 0),
                skipped=stats.get("skipped", {}).get(name, 0),
                ignored=stats.get("ignored", {}).get(name, 0),
            )
        return RunResult(
            status=result.status, rc=result.rc, hosts=per_host, failed_tasks=failed_tasks,
            changed_tasks=changed_tasks, events=count,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
