"""Real processes for the integration and end-to-end rings: the test host's Celery workers
(its three pools, or all of them in one process) and a daphne server, on the test database
and the test Redis db.
Every process started here is killed on teardown, also when the test failed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def stack_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": database_url(),
            "VSB_HOST_NAME": settings.VSB["HOST_NAME"],
            "VSB_SSH_CA_KEY": settings.VSB["SSH_CA_KEY"],
            "VSB_SANDBOX_DIR": settings.VSB["SANDBOX_DIR"],
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def settingless_env(**settings_env: str) -> dict[str, str]:
    """This process's environment without any of the project's settings, plus
    `settings_env`: a fresh shell on this machine, as scripts/run.sh starts from."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "VSB_")) and k not in ("REDIS_URL", "TEST_REDIS_URL")
    }
    env.update(settings_env)
    return env


@dataclass(frozen=True)
class HostResources:
    """What a KVM host's worker needs to itself on this machine, so that two hosts can run
    side by side on one libvirtd (tests/e2e/test_two_hosts.py): its name (hence its queues),
    a port range for its guests' SSH forwards, a sandbox directory, a tmux server, terminal
    and egress directories."""

    name: str
    port_range: tuple[int, int]
    sandbox_dir: str
    terminal_dir: str
    egress_dir: str

    def env(self) -> dict[str, str]:
        """The settings of this host's processes (on top of `stack_env`)."""
        return {
            "VSB_HOST_NAME": self.name,
            "VSB_PORT_RANGE": f"{self.port_range[0]}-{self.port_range[1]}",
            "VSB_SANDBOX_DIR": self.sandbox_dir,
            "VSB_TMUX_SOCKET": f"vsb-{self.name}",
            "VSB_TERMINAL_DIR": self.terminal_dir,
            "VSB_EGRESS_DIR": self.egress_dir,
        }


def second_host() -> HostResources:
    """The test run's second KVM host on this machine, beside the test host (settings.VSB).
    Its name is VSB_TEST_HOST_B (default: the test host's name + "-b"); its port range
    VSB_TEST_HOST_B_PORT_RANGE (default: the range right after the test host's, as large);
    its sandbox directory VSB_TEST_HOST_B_SANDBOX_DIR (default: beside the test host's, named
    after it); its terminal and egress directories beside the test host's, named after it."""
    vsb = settings.VSB
    name = os.environ.get("VSB_TEST_HOST_B") or f"{vsb['HOST_NAME']}-b"
    low, high = vsb["PORT_RANGE"]
    ports = os.environ.get("VSB_TEST_HOST_B_PORT_RANGE") or f"{high + 1}-{2 * high + 1 - low}"

    def beside(path: str, prefix: str) -> str:
        return str(Path(path).parent / f"{prefix}-{name}")

    return HostResources(
        name=name,
        port_range=tuple(int(p) for p in ports.split("-")),
        sandbox_dir=os.environ.get("VSB_TEST_HOST_B_SANDBOX_DIR")
        or beside(vsb["SANDBOX_DIR"], "sandboxes"),
        terminal_dir=beside(vsb["TERMINAL_DIR"], "terminals"),
        egress_dir=beside(vsb["EGRESS_DIR"], "egress"),
    )


STARTED: list[Proc] = []


def kill_all_started() -> None:
    """Last-resort cleanup at the end of the session: no stray worker or server survives."""
    for proc in STARTED:
        proc.kill()


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    popen: subprocess.Popen | None = None
    log_path: Path = field(default_factory=Path)

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{self.name}.log"
        log = open(self.log_path, "ab")
        log.write(f"\n==== start {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        STARTED.append(self)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def log_since_start(self) -> str:
        """What the current process (not an earlier one of the same name) has logged."""
        text = self.log_path.read_text(errors="replace")
        return text[text.rfind("\n==== start ") :]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def flush_test_redis() -> None:
    import redis

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


POOLS = ("lifecycle", "commands", "terminals")


def _named(base: str, env: dict[str, str]) -> str:
    """A process's name (and log file's): `base`, with the host's name when `env` names one
    (a second host's workers log apart from the first's)."""
    host = env.get("VSB_HOST_NAME")
    return f"{base}-{host}" if host else base


def worker(pool: str = "all", **env: str) -> Proc:
    """A worker of the test host (`manage.py worker <pool>`, as scripts/run.sh starts them):
    one pool, or `all` of them in one process (cheaper, for the rings that do not test the
    pools themselves). `env` with VSB_HOST_NAME and the rest of `HostResources.env()`: a
    worker of another host on this machine."""
    return Proc(
        _named(f"worker-{pool}", env),
        [
            sys.executable,
            "manage.py",
            "worker",
            pool,
            "--",
            "--without-gossip",
            "--without-mingle",
        ],
        stack_env(**env),
    )


def wait_for_ready(proc: Proc, timeout: float = 60) -> None:
    """Until the Celery worker `proc` says it is ready (after its worker_ready handlers:
    recovery done, relay started), as its log shows since its latest start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        if " ready." in proc.log_since_start():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not become ready:\n{proc.log_tail()}")


def egress_proxy(**env: str) -> Proc:
    """The test host's egress proxy (manage.py egress_proxy): guests of the e2e ring reach
    the network only through it, as in production."""
    return Proc(
        _named("egress", env), [sys.executable, "manage.py", "egress_proxy"], stack_env(**env)
    )


def wait_for_heartbeat(proc: Proc, timeout: float = 60, host_name: str = "") -> None:
    """Until the worker has registered its host (worker_ready ran): the test host, or the
    host named `host_name`."""
    from sandboxes.models import Host

    deadline = time.monotonic() + timeout
    started = time.time()
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{proc.log_tail()}")
        host = Host.objects.filter(name=host_name or settings.VSB["HOST_NAME"]).first()
        if host and host.last_heartbeat and host.last_heartbeat.timestamp() >= started - 1:
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker did not register its host:\n{proc.log_tail()}")


def daphne(port: int, **env: str) -> Proc:
    return Proc(
        "daphne",
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
        stack_env(**env),
    )


def wait_for_http(url: str, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer:\n{proc.log_tail()}")


def wait_for_socket(proc: Proc, path: str, timeout: float = 30) -> None:
    """Until `proc` accepts connections on the unix socket at `path`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(path)
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {path}:\n{proc.log_tail()}")


def start_servers(**env: str) -> tuple[dict[str, Proc], Proc, str]:
    """Start the host's three worker pools (separate processes, as scripts/run.sh starts
    them) and a daphne server with `env`; returns ({pool: worker}, web, base URL). The caller
    stops them all (in a `finally` that also covers `wait_for_servers`)."""
    workers = start_pools(**env)
    port = free_port()
    web = daphne(port, **env)
    web.start()
    return workers, web, f"http://127.0.0.1:{port}"


def start_pools(**env: str) -> dict[str, Proc]:
    """The host's three worker pools (separate processes, as scripts/run.sh starts them)
    with `env`, started; the caller waits for them (`wait_for_pools`) and stops them."""
    workers = {pool: worker(pool, **env) for pool in POOLS}
    for proc in workers.values():
        proc.start()
    return workers


def wait_for_pools(blocker, workers: dict[str, Proc], host_name: str = "") -> None:
    """Until the lifecycle pool has registered its host (the test host, or `host_name`;
    through `blocker`, pytest-django's db blocker) and the other pools are ready."""
    with blocker.unblock():
        wait_for_heartbeat(workers["lifecycle"], host_name=host_name)
    for pool, proc in workers.items():
        if pool != "lifecycle":
            wait_for_ready(proc)


def wait_for_servers(blocker, workers: dict[str, Proc], web: Proc, url: str) -> None:
    """Until the host's pools are up (`wait_for_pools`) and the server answers /v1/health."""
    wait_for_pools(blocker, workers)
    wait_for_http(f"{url}/v1/health", web)


class Api:
    """A minimal HTTP client for the tests: real HTTP through daphne, JSON in and out."""

    def __init__(self, base_url: str, key: str | None):
        self.base_url = base_url.rstrip("/")
        self.key = key

    def request(
        self, method: str, path: str, body=None, raw: bytes | None = None, timeout: float = 300
    ):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read()
                return resp.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as err:
            text = err.read()
            try:
                return err.code, json.loads(text)
            except ValueError:
                return err.code, {"raw": text.decode(errors="replace")}

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body if body is not None else {}, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def wait_operation(self, op_id: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, op = self.get(f"/v1/operations/{op_id}")
            assert status == 200, op
            if op["status"] in ("succeeded", "failed", "errored"):
                return op
            time.sleep(0.2)
        raise AssertionError(f"operation {op_id} not done after {timeout} s: {op}")

    # ---- sandboxes on real VMs (the e2e ring) --------------------------------------------

    def create_sandbox(self, **body) -> dict:
        """A ready sandbox as `body` says, of debian-base unless it names a source or (a fork)
        an origin sandbox: 201 and the sandbox."""
        if "from_sandbox" not in body:
            body = {"source_vm_name": "debian-base", **body}
        status, reply = self.post("/v1/sandboxes", {**body, "wait_for_ip": True})
        assert status == 201, reply
        return reply["sandbox"]

    def destroy_sandbox(self, sandbox_id: str) -> None:
        """Destroy it: 202, and the operation succeeds."""
        status, body = self.delete(f"/v1/sandboxes/{sandbox_id}")
        assert status == 202, body
        assert self.wait_operation(body["operation"]["id"])["status"] == "succeeded"

    @contextlib.contextmanager
    def ready_sandbox(self, **body) -> Iterator[dict]:
        """A ready sandbox (see create_sandbox) for the block; destroyed after it unless a
        test destroyed it already."""
        sandbox = self.create_sandbox(**body)
        try:
            yield sandbox
        finally:
            status, reply = self.delete(f"/v1/sandboxes/{sandbox['id']}")
            if status == 202:
                self.wait_operation(reply["operation"]["id"])

    def run(self, sandbox_id: str, command: str, **extra) -> dict:
        """Run `command` in the sandbox: 200 and the finished command."""
        status, body = self.post(
            f"/v1/sandboxes/{sandbox_id}/command", {"command": command, **extra}
        )
        assert status == 200, body
        return body["command"]

    def snapshot(self, sandbox_id: str, name: str) -> dict:
        """Take snapshot `name` and wait for it: 201 and the snapshot."""
        status, body = self.post(
            f"/v1/sandboxes/{sandbox_id}/snapshots", {"name": name, "wait": True}
        )
        assert status == 201, body
        return body["snapshot"]

    def restore(self, sandbox_id: str, name: str) -> dict:
        """Restore snapshot `name` and wait for it: 200 and the sandbox."""
        status, body = self.post(
            f"/v1/sandboxes/{sandbox_id}/snapshots/{name}/restore", {"wait": True}
        )
        assert status == 200, body
        return body["sandbox"]
