"""A Redis and a PostgreSQL of a test's own, on free loopback ports with their data in a
temporary directory, that the test may stop and start at will without disturbing the
shared ones everybody else's tests use (tests/e2e/test_restarts.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from .stack import ROOT, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class OwnRedis:
    """Redis as scripts/start-redis.sh starts it (append-only file, password), on its own
    port and directory."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.dir = root / "redis"
        self.env = {
            **os.environ,
            "VSB_REDIS_PORT": str(self.port),
            "VSB_REDIS_DIR": str(self.dir),
            "VSB_REDIS_LOG": str(root / "redis.log"),
            "VSB_SECRETS_DIR": str(root / "secrets"),
        }

    def start(self) -> None:
        subprocess.run(
            ["bash", "scripts/start-redis.sh"], cwd=ROOT, env=self.env, check=True, timeout=60
        )

    @property
    def url(self) -> str:
        password = (Path(self.env["VSB_SECRETS_DIR"]) / "redis-password").read_text().strip()
        return f"redis://:{password}@127.0.0.1:{self.port}/0"

    def _pid(self) -> int | None:
        pid_file = self.dir / f"redis-server-{self.port}.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it: it writes out its append-only file."""
        terminate(self._pid())

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


class OwnPostgres:
    """A throwaway PostgreSQL 15 cluster run as the postgres user, listening on 127.0.0.1 and
    a socket in its own directory, with the project's role and database."""

    user = password = database = "virsh_sandbox"

    def __init__(self, root: Path):
        self.port = free_port()
        self.root = root / "pg"
        self.root.mkdir(mode=0o755)
        shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            capture_output=True,
            timeout=120,
            cwd="/",
        )

    def init(self) -> None:
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
        )  # fmt: skip
        self.start()
        sql = (
            f"CREATE ROLE {self.user} LOGIN CREATEDB PASSWORD '{self.password}';"
            f"CREATE DATABASE {self.database} OWNER {self.user};"
        )
        for statement in sql.rstrip(";").split(";"):
            self._as_postgres(
                str(PG_BIN / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                "-d", "postgres", "-qc", statement,
            )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """fast: as a service manager restarts it (open connections are cut)."""
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"
            )

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    @property
    def url(self) -> str:
        return f"postgres://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.url, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()


def running(pid: int) -> bool:
    """Running: a daemonized server's zombie waits for PID 1 to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def terminate(pid: int | None, grace: float = 20) -> None:
    """SIGTERM the daemon `pid` (if any) and wait until it has stopped; SIGKILL it if it has
    not after `grace` seconds (a loaded machine)."""
    if pid is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        try:
            _wait_for(lambda: not running(pid), f"process {pid} to stop", timeout=grace)
            return
        except RuntimeError:
            if sig == signal.SIGKILL:
                raise


def scratch_dir(prefix: str) -> Path:
    """A temporary directory others may traverse (the postgres user works inside it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
