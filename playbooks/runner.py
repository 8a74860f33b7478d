"""Run a playbook with ansible-runner against hosts reached over SSH with a short-lived
certificate and a pinned host key. No Django: the caller passes targets, callbacks and the
`Isolation` (who runs Ansible, what it must not see).

Ansible templates playbooks and runs lookups and plugins on the controller, so it never runs
in the worker: each run gets a private directory owned by an unprivileged user, holding only
that run's playbook, key, certificate and known_hosts, and `isolated.py` runs ansible-runner
there as that user, in its own PID and mount namespace with the service's secrets covered and
a clean environment. Events come back as JSON lines on a pipe; cancel is a SIGTERM; the
directory is removed afterwards, whatever happened. See docs/playbooks.md "Who runs Ansible"."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pwd
import re
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields

log = logging.getLogger(__name__)

ANSIBLE_BIN = os.path.dirname(sys.executable)
ISOLATED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "isolated.py")
UNSHARE = "/usr/bin/unshare"
# A file shipped beside the playbook: one plain path component (the generator's
# `<sha256[:12]>-<name>`), so nothing can land outside files/.
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
HOST_KEY_RE = re.compile(r"^[A-Za-z0-9@.-]{1,64} [A-Za-z0-9+/]{1,8192}={0,2}$")
MAX_LINE = 16 * 1024 * 1024  # one event; a longer line is dropped, not buffered
CANCEL_GRACE_SECONDS = 30
# Run directories of a worker that died (SIGKILL, power loss) are removed by the next run.
STALE_SECONDS = 6 * 3600


class RunnerError(Exception):
    """Ansible cannot be started here (no such user, not root, no unshare): permanent, an
    operator has to fix the host."""


@dataclass(frozen=True)
class Isolation:
    """Who runs Ansible and what it must not see (runtime.ansible_isolation() builds it)."""

    user: str = "vsb-ansible"
    run_root: str = "/run/virsh-sandbox/ansible"  # one private directory per run under it
    hide: tuple[str, ...] = ()  # directories covered by an empty tmpfs in the run's namespace


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


# ansible-runner's `stats` counts each of HostStats' fields per host under the field's name,
# but for these two.
_STATS_KEY = {"failed": "failures", "unreachable": "dark"}

# ansible-runner's own words for how a run ended (and ours for a run we stopped).
SUCCESSFUL, FAILED, CANCELED, TIMEOUT = "successful", "failed", "canceled", "timeout"


@dataclass
class RunResult:
    status: str  # SUCCESSFUL, FAILED, CANCELED or TIMEOUT
    rc: int
    hosts: dict[str, HostStats]
    failed_tasks: list[dict]  # {host, task, message}
    changed_tasks: list[dict]  # {host, task}
    events: int
    error: str = ""  # why the run ended without ansible-runner's result, if it did

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESSFUL

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())


def _known_host(target: Target) -> str:
    key = " ".join(target.host_key.split()[:2])  # type and key; a comment is dropped
    if not HOST_KEY_RE.fullmatch(key) or not target.host or any(c.isspace() for c in target.host):
        raise ValueError(f"target {target.name}: not a host and a pinned host key")
    where = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    return f"{where} {key}\n"


def _write(path: str, data: str | bytes, mode: int = 0o600) -> str:
    """A new file (never through a link, never over an existing one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


def write_project(directory: str, yaml_text: str, files: dict[str, bytes]) -> str:
    """Lay the playbook out as Ansible expects: playbook.yml beside files/. Every file name
    must be one plain component: no name reaches outside files/."""
    bad = [name for name in files if not FILE_NAME_RE.fullmatch(name) or name in (".", "..")]
    if bad:
        raise ValueError(f"not a file name for files/: {bad[0]!r}")
    os.makedirs(os.path.join(directory, "files"), exist_ok=True)
    path = _write(os.path.join(directory, "playbook.yml"), yaml_text, 0o644)
    for name, data in files.items():
        _write(os.path.join(directory, "files", name), data, 0o644)
    return path


# --- the run directory and the isolated process ---------------------------------------------


def _account(isolation: Isolation) -> pwd.struct_passwd:
    try:
        account = pwd.getpwnam(isolation.user)
    except KeyError:
        raise RunnerError(
            f"the system user {isolation.user!r} that runs Ansible does not exist: run scripts/install-system.sh"
        ) from None
    if account.pw_uid == 0 or account.pw_gid == 0:
        raise RunnerError(f"{isolation.user!r} is root: Ansible must run as an unprivileged user")
    if os.geteuid() != 0:
        raise RunnerError("running Ansible as another user needs a worker running as root")
    return account


def _run_root(path: str) -> str:
    """The directory holding run directories: root's, not a link, writable by root only."""
    os.makedirs(path, mode=0o711, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise RunnerError(f"{path} must be a directory of root's, writable by root only")
    os.chmod(path, 0o711)
    now = time.time()
    for entry in os.scandir(path):
        if (
            entry.name.startswith("run-")
            and now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS
        ):
            _remove(entry.path)
    return path


def _remove(path: str) -> None:
    try:
        shutil.rmtree(path)  # fd-based on Linux: does not follow links the run left inside
    except FileNotFoundError:
        pass
    except OSError:
        log.error("could not remove the ansible run directory %s", path, exc_info=True)


def _hand_over(base: str, account: pwd.struct_passwd) -> None:
    """Everything under `base` was made by this process (no links): give it to the user."""
    for dirpath, dirs, files in os.walk(base):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(dirpath, name), account.pw_uid, account.pw_gid)
    os.lchown(base, account.pw_uid, account.pw_gid)


def _keep() -> list[str]:
    """What the isolated process needs to see of what may be hidden: the Python installation,
    the virtualenv, isolated.py."""
    paths = {
        sys.base_prefix,
        sys.base_exec_prefix,
        sys.prefix,
        sys.exec_prefix,
        os.path.dirname(ISOLATED),
    }
    return sorted(os.path.realpath(p) for p in paths)


# Resolved before any fork: the child between fork and exec only calls it.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the worker dies, unshare dies, its --kill-child kills PID 1, the namespace ends.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Outcome:
    result: dict | None
    rc: int | None
    canceled: bool
    timed_out: bool
    error: str


def _isolated(
    mode: str,
    isolation: Isolation,
    prepare: Callable[[str], None],
    *,
    on_event: Callable[[dict], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    timeout: int = 3600,
) -> _Outcome:
    """Make a private run directory, let `prepare` fill it, hand it to the user, run
    isolated.py `mode` there and read its JSON lines until it ends. The directory is removed
    afterwards, also on failure."""
    account = _account(isolation)
    base = tempfile.mkdtemp(prefix="run-", dir=_run_root(isolation.run_root))
    proc = None
    try:
        for sub in ("home", "tmp"):
            os.makedirs(os.path.join(base, sub), mode=0o700)
        prepare(base)
        _hand_over(base, account)
        root = os.path.realpath(isolation.run_root)
        hide = sorted({os.path.realpath(h) for h in (*isolation.hide, root)})
        command = [
            UNSHARE,
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            sys.executable,
            "-I",
            "-B",
            ISOLATED,
            "launch",
            "--user",
            isolation.user,
            "--run-dir",
            base,
            "--mode",
            mode,
            *(f"--hide={h}" for h in hide),
            *(f"--keep={k}" for k in (*_keep(), base)),
        ]
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl, no locks
            )
            outcome = _read(proc, on_event, cancelled or (lambda: False), timeout + 60)
            stderr.seek(0, os.SEEK_END)
            stderr.seek(max(0, stderr.tell() - 4000))
            tail = stderr.read().decode(errors="replace").strip()
        if outcome.result is None:
            outcome.error = (
                tail or f"the ansible process ended with status {outcome.rc} and no result"
            )
        return outcome
    finally:
        if proc is not None and proc.poll() is None:
            _signal(proc, signal.SIGKILL)
            proc.wait()
        _remove(base)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _read(proc: subprocess.Popen, on_event, cancelled, limit: float) -> _Outcome:
    outcome = _Outcome(result=None, rc=None, canceled=False, timed_out=False, error="")
    deadline = time.monotonic() + limit
    cancel_at = None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    buffer, skipping = b"", False
    fd = proc.stdout.fileno()
    while True:
        now = time.monotonic()
        if cancel_at is None and cancelled():
            outcome.canceled, cancel_at = True, now
            _signal(proc, signal.SIGTERM)  # isolated.py asks ansible-runner to cancel
        if (cancel_at is not None and now - cancel_at > CANCEL_GRACE_SECONDS) or now > deadline:
            outcome.timed_out = outcome.timed_out or (cancel_at is None)
            _signal(proc, signal.SIGKILL)
        if not selector.select(timeout=0.5):
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if skipping:
                skipping = False
                continue
            _line(line, outcome, on_event)
        if len(buffer) > MAX_LINE:
            buffer, skipping = b"", True
    selector.close()
    outcome.rc = proc.wait()
    return outcome


def _line(line: bytes, outcome: _Outcome, on_event) -> None:
    try:
        message = json.loads(line)
    except ValueError:
        log.warning("ansible run: not a protocol line: %r", line[:200])
        return
    if not isinstance(message, dict):
        return
    if isinstance(message.get("event"), dict) and on_event:
        on_event(message["event"])
    elif isinstance(message.get("result"), dict):
        outcome.result = message["result"]


def syntax_check(
    yaml_text: str, files: dict[str, bytes], *, isolation: Isolation
) -> tuple[bool, str]:
    """`ansible-playbook --syntax-check`, which templates play-level fields: isolated too."""
    outcome = _isolated(
        "syntax",
        isolation,
        lambda base: write_project(os.path.join(base, "project"), yaml_text, files),
        timeout=180,
    )
    if outcome.result is None:
        return False, outcome.error[-4000:]
    return outcome.result.get("rc") == 0, str(outcome.result.get("output", ""))[-4000:]


def run(
    yaml_text: str,
    files: dict[str, bytes],
    targets: list[Target],
    *,
    isolation: Isolation,
    check: bool = False,
    on_event: Callable[[dict], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    timeout: int = 3600,
) -> RunResult:
    names = [t.name for t in targets]
    # What the events tell, gathered as they come: RunResult's fields of the same names.
    seen: dict = {"failed_tasks": [], "changed_tasks": [], "events": 0}

    def prepare(base: str) -> None:
        write_project(os.path.join(base, "project"), yaml_text, files)
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
                    f"-o CertificateFile={shlex.quote(cert)} -o UserKnownHostsFile={shlex.quote(known)} "
                    "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o GlobalKnownHostsFile=/dev/null"
                ),
                "ansible_python_interpreter": "/usr/bin/python3",
                **t.variables,
            }
        spec = {
            "inventory": {"all": {"hosts": hosts}},
            "envvars": {
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_RETRY_FILES_ENABLED": "False",
                "ANSIBLE_LOCAL_TEMP": os.path.join(base, "tmp", "ansible"),
                "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(base, "cp"),
                # One SSH exec per task instead of mkdir/put/chmod/exec/rm: targets log in as
                # root (no sudo, no requiretty), and under TCG every guest process costs.
                "ANSIBLE_PIPELINING": "True",
            },
            "cmdline": "--check --diff" if check else None,
            "timeout": timeout,
        }
        _write(os.path.join(base, "spec.json"), json.dumps(spec))

    def handler(event: dict) -> None:
        seen["events"] += 1
        data = event.get("event_data", {}) or {}
        kind = event.get("event")
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            res = data.get("res", {}) or {}
            seen["failed_tasks"].append(
                {
                    "host": data.get("host"),
                    "task": data.get("task"),
                    "message": str(res.get("msg") or res.get("stderr") or res)[:2000],
                    "unreachable": kind == "runner_on_unreachable",
                }
            )
        elif kind == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            seen["changed_tasks"].append({"host": data.get("host"), "task": data.get("task")})
        if on_event:
            on_event(event)

    outcome = _isolated(
        "run", isolation, prepare, on_event=handler, cancelled=cancelled, timeout=timeout
    )
    result = outcome.result or {}
    status = result.get("status") or (
        CANCELED if outcome.canceled else TIMEOUT if outcome.timed_out else FAILED
    )
    stats = result.get("stats") or {}
    per_host = {
        name: HostStats(
            **{
                f.name: stats.get(_STATS_KEY.get(f.name, f.name), {}).get(name, 0)
                for f in fields(HostStats)
            }
        )
        for name in names
    }
    rc = (
        result.get("rc")
        if isinstance(result.get("rc"), int)
        else (outcome.rc if outcome.rc is not None else -1)
    )
    return RunResult(status=status, rc=rc, hosts=per_host, error=outcome.error, **seen)
