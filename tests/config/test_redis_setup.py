"""scripts/start-redis.sh, the Redis set-up of run.sh and test.sh, against a redis-server of
the test's own on a free loopback port with its own data directory (never the machine's
shared one): loopback only, a password generated once into the secrets directory, refused
without it, the same password for every client through the settings; and a Redis an older
version of the scripts started without a password is given one in place, without a
restart, keeping what it holds. Either way it keeps an append-only file, so queued tasks
survive a restart."""

from __future__ import annotations

import ipaddress
import json
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.support.own_services import terminate
from tests.support.stack import ROOT, free_port, settingless_env

pytestmark = pytest.mark.integration


class Setup:
    """One test's Redis: its port, its directories, the processes it started."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.data = tmp / "data"
        self.secrets = self.data / "secrets"
        self.redis_dir = tmp / "redis"
        self.pid_files = [self.redis_dir / f"redis-server-{self.port}.pid", tmp / "old.pid"]
        self.env = settingless_env(
            VSB_DATA_DIR=str(self.data),
            VSB_REDIS_PORT=str(self.port),
            VSB_REDIS_DIR=str(self.redis_dir),
            VSB_REDIS_LOG=str(tmp / "redis.log"),
        )

    def run_script(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "scripts/start-redis.sh"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_old_style(self, *extra: str) -> None:
        """redis-server as the scripts before this change started it: no password."""
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port",
             str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.pid_files[1].parent),
             "--pidfile", str(self.pid_files[1]), "--logfile", str(self.pid_files[1].parent / "old.log"),
             *extra],
            check=True,
        )  # fmt: skip
        wait_until(lambda: self.pid() is not None and answers(self.port))

    @property
    def password(self) -> str:
        return (self.secrets / "redis-password").read_text().strip()

    def client(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=password, socket_timeout=5)

    def pid(self) -> int | None:
        for pid_file in self.pid_files:
            if pid_file.exists() and pid_file.read_text().strip():
                return int(pid_file.read_text())
        return None

    def stop(self) -> None:
        terminate(self.pid())


def wait_until(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def anonymous_ping(port: int) -> bytes | None:
    """Redis's reply to a PING without AUTH, as a raw client sends it; None: nobody listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(200)
    except ConnectionRefusedError:
        return None


def answers(port: int) -> bool:
    return anonymous_ping(port) is not None


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(raw[:width])))
    return found


def refuses_anonymous(setup: Setup) -> bool:
    return anonymous_ping(setup.port) == b"-NOAUTH Authentication required.\r\n"


def settings_redis(setup: Setup, module: str, **extra: str) -> dict:
    """REDIS_URL and its users in a fresh process with `module`, after a PING through it."""
    code = """
import json, redis
from django.conf import settings as s
print(json.dumps({
    "url": s.REDIS_URL, "broker": s.CELERY_BROKER_URL, "results": s.CELERY_RESULT_BACKEND,
    "channels": s.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"],
    "ping": redis.Redis.from_url(s.REDIS_URL, socket_timeout=5).ping()
        if s.REDIS_URL.startswith("redis://:") else None,
}))
"""
    env = dict(setup.env, DJANGO_SETTINGS_MODULE=module, **extra)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def test_it_starts_redis_on_loopback_with_a_generated_password(setup):
    result = setup.run_script()
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(setup.secrets.stat().st_mode) == 0o700
    for name in ("redis-password", "redis.conf"):
        assert stat.S_IMODE((setup.secrets / name).stat().st_mode) == 0o600
    assert refuses_anonymous(setup)
    assert setup.client(setup.password).ping()
    assert listening_addresses(setup.port) and listening_addresses(setup.port) <= {
        "127.0.0.1",
        "::1",
    }
    pid = setup.pid()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert setup.password.encode() not in cmdline, "the password is not shown by ps"
    assert setup.password not in result.stdout + result.stderr

    password = setup.password
    assert setup.run_script().returncode == 0
    assert (setup.password, setup.pid()) == (password, pid), "reused, not restarted"


def test_every_client_of_the_settings_uses_the_password(setup):
    assert setup.run_script().returncode == 0
    production = settings_redis(setup, "config.settings.production")
    assert production["ping"] is True
    assert production["url"] == f"redis://:{setup.password}@127.0.0.1:{setup.port}/0"
    assert production["url"] == production["broker"] == production["results"]
    assert production["url"] == production["channels"]
    tests = settings_redis(setup, "config.settings.test")
    assert tests["ping"] is True and tests["url"].endswith(f"@127.0.0.1:{setup.port}/15")
    assert tests["url"] == tests["broker"] == tests["channels"]
    # An explicit URL still wins.
    explicit = settings_redis(
        setup, "config.settings.production", REDIS_URL="redis://127.0.0.1:1/3"
    )
    assert explicit["url"] == explicit["broker"] == "redis://127.0.0.1:1/3"


def test_a_passwordless_redis_of_an_older_install_gets_the_password_in_place(setup):
    setup.start_old_style()
    pid = setup.pid()
    assert anonymous_ping(setup.port) == b"+PONG\r\n"
    setup.client().rpush("control", "a queued task")
    assert listening_addresses(setup.port) == {"127.0.0.1"}

    result = setup.run_script()
    assert result.returncode == 0, result.stderr
    assert "has no password" in result.stderr
    assert refuses_anonymous(setup)
    authenticated = setup.client(setup.password)
    assert authenticated.lrange("control", 0, -1) == [b"a queued task"], "not restarted"
    assert setup.pid() == pid
    assert listening_addresses(setup.port) <= {"127.0.0.1", "::1"}
    assert authenticated.config_get("protected-mode") == {"protected-mode": "yes"}
    assert authenticated.config_get("appendonly") == {"appendonly": "yes"}
    assert "append-only file" in result.stderr
    assert setup.password not in result.stdout + result.stderr

    assert setup.run_script().returncode == 0, "the second run finds it done"


def test_it_stops_at_a_redis_that_wants_another_password(setup):
    setup.start_old_style("--requirepass", "someone-elses")
    result = setup.run_script()
    assert result.returncode != 0
    assert "does not accept the password" in result.stderr
    assert setup.password not in result.stdout + result.stderr
    assert setup.client("someone-elses").ping(), "left as it was"


def test_queued_tasks_survive_a_restart_of_the_redis_it_starts(setup):
    assert setup.run_script().returncode == 0
    client = setup.client(setup.password)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    client.rpush("kvm.somehost", "a queued task")
    client.hset("unacked", "tag", "a task being run")
    wait_until(lambda: client.info("persistence")["aof_last_write_status"] == "ok")
    time.sleep(1.2)  # appendfsync everysec: at most the last second is at risk

    setup.stop()
    assert setup.run_script().returncode == 0
    client = setup.client(setup.password)
    assert client.lrange("kvm.somehost", 0, -1) == [b"a queued task"]
    assert client.hgetall("unacked") == {b"tag": b"a task being run"}
