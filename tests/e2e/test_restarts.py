"""No lost work when a service restarts: Redis, PostgreSQL or libvirtd restarted in the middle
of a create, a command or a diff. Within a minute of the restart each operation has
finished or failed with a reason, no row is left `running` or `pending`, and no domain or
disk is left without a live sandbox.

The stack (a worker with its beat, daphne) runs against a Redis and a PostgreSQL of this
module's own (tests/support/own_services.py), so restarting them disturbs nobody else's
tests, and is driven through HTTP only. libvirtd is the machine's own: one short test
restarts it (guests keep running through a libvirtd restart).

The minute is counted from the moment the service goes down. A restart cannot make the work
itself faster, and on a loaded machine a TCG guest's boot or a diff alone can take longer
than that: the bound for a create adds the time a boot takes on this machine now (measured
by the module's first sandbox), and the bound for a diff the time the same diff took without
a restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import stack
from tests.support.own_services import OwnPostgres, OwnRedis, scratch_dir

from .conftest import image_dir, sweep_test_domains
from .conftest import test_domains as our_domains

pytestmark = pytest.mark.e2e

LIMIT = 60  # seconds from a service going down to the operation having ended
DONE = ("succeeded", "failed", "errored")
TRANSITIONAL = (
    "queued",
    "requested",
    "provisioning",
    "booting",
    "waiting_for_ip",
    "stopping",
    "restoring",
    "destroying",
)
TIMINGS: dict[str, str] = {}


class RestartStack:
    """The module's own services and the stack on them, with what the tests check."""

    def __init__(self, root: Path):
        self.root = root
        self.redis = OwnRedis(root)
        self.pg = OwnPostgres(root)
        self.procs: list[stack.Proc] = []
        self.boot_seconds = 0.0  # how long a create takes on this machine now

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.pg.url,
            "TEST_REDIS_URL": self.redis.url,
            "VSB_DRIVER": "libvirt",
            "VSB_EGRESS": "off",
            "VSB_READY_TIMEOUT_SECONDS": "300",
            "VSB_RESEND_INTERVAL_SECONDS": "5",
        }

    def manage(self, *argv: str) -> str:
        return subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=stack.ROOT,
            env=stack.stack_env(**self.env()),
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout

    def start(self) -> None:
        self.redis.start()
        self.pg.init()
        self.manage("migrate", "--noinput", "-v0")
        self.manage(
            "shell",
            "-c",
            "import json, pathlib; from sandboxes import services; "
            f"d = pathlib.Path({str(image_dir())!r}); "
            "services.register_image('debian-base', d, json.loads((d / 'manifest.json').read_text()))",
        )
        key = self.manage("create_agent", "restart-agent", "--key-name", "e2e").split()[-1]
        worker = stack.worker(**self.env())
        worker.name = "restarts-worker"
        worker.argv += ["-B", "--schedule", str(self.root / "beat-schedule")]
        port = stack.free_port()
        web = stack.daphne(port, **self.env())
        web.name = "restarts-daphne"
        for proc in (worker, web):
            proc.start()
            self.procs.append(proc)
        self.api = stack.Api(f"http://127.0.0.1:{port}", key)
        stack.wait_for_http(f"{self.api.base_url}/v1/health", web)
        self.poll(
            "/v1/health",
            lambda body: any(h.get("alive") for h in body.get("hosts", [])),
            timeout=90,
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.redis.stop()
        self.pg.stop("immediate")

    # ---- HTTP, through restarts -----------------------------------------------------------

    def poll(self, path: str, until, timeout: float) -> dict:
        """GET `path` until `until(body)`; answers other than 200 (PostgreSQL restarting) and
        refused connections are waited out."""
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            try:
                status, body = self.api.get(path, timeout=10)
            except OSError:
                status = None
            if status == 200 and until(body):
                return body
            time.sleep(0.3)
        raise AssertionError(f"{path}: not there after {timeout} s; last answer {body}")

    def sandbox(self, sandbox_id: str) -> dict:
        return self.poll(f"/v1/sandboxes/{sandbox_id}", lambda b: True, 30)["sandbox"]

    def create_until(self, states: tuple[str, ...]) -> tuple[str, str]:
        """Ask for a sandbox and wait until it is in one of `states`: (sandbox id, op id)."""
        status, body = self.api.post("/v1/sandboxes", {"source_vm_name": "debian-base"})
        assert status == 202, body
        sandbox_id = body["sandbox"]["id"]
        self.poll(
            f"/v1/sandboxes/{sandbox_id}", lambda b: b["sandbox"]["state"] in states, timeout=360
        )
        return sandbox_id, body["operation"]["id"]

    def ended_within_limit(
        self, op_id: str, down_at: float, label: str, work_takes: float = 0.0
    ) -> dict:
        """The operation once ended, no later than LIMIT seconds after `down_at` (plus
        `work_takes`, what the work itself takes on this machine now)."""
        limit = LIMIT + work_takes
        op = self.poll(
            f"/v1/operations/{op_id}",
            lambda b: b["status"] in DONE,
            timeout=max(1.0, down_at + limit - time.monotonic()),
        )
        took = time.monotonic() - down_at
        TIMINGS[label] = (
            f"{op['status']} {took:.1f} s after the restart began (bound {limit:.0f} s)"
        )
        assert took <= limit
        if op["status"] != "succeeded":
            assert op["error"], op
        return op

    def check_create(self, op: dict, sandbox_id: str) -> None:
        """A create that succeeded gives a working sandbox; one that failed says why."""
        sandbox = self.sandbox(sandbox_id)
        if op["status"] == "succeeded":
            assert sandbox["state"] == "ready", sandbox
            assert self.api.run(sandbox_id, "echo alive")["stdout"] == "alive\n"
        else:
            assert sandbox["state"] == "error" and sandbox["error"], sandbox

    def destroy(self, sandbox_id: str) -> None:
        status, body = self.api.delete(f"/v1/sandboxes/{sandbox_id}")
        assert status == 202, body
        op = self.poll(
            f"/v1/operations/{body['operation']['id']}", lambda b: b["status"] in DONE, 120
        )
        assert op["status"] == "succeeded", op

    def command_in_background(self, sandbox_id: str, command: str) -> dict:
        """POST the command from a thread; the returned dict gets "status" and "body"."""
        answer: dict = {}

        def run() -> None:
            try:
                answer["status"], answer["body"] = self.api.post(
                    f"/v1/sandboxes/{sandbox_id}/command",
                    {"command": command, "timeout_seconds": 120},
                    timeout=180,
                )
            except OSError as exc:
                answer["status"], answer["body"] = None, str(exc)

        answer["thread"] = threading.Thread(target=run, daemon=True)
        answer["thread"].start()
        return answer

    def wait_until_claimed(self, command: str) -> None:
        """Until a worker took the command (its SSH session is about to start)."""
        deadline = time.monotonic() + 30
        while not self.pg.query(
            "SELECT 1 FROM sandboxes_command WHERE command = %s AND claimed_at IS NOT NULL",
            command,
        ):
            assert time.monotonic() < deadline, "no worker took the command"
            time.sleep(0.2)
        time.sleep(1)  # the command is running in the guest

    # ---- a restart in the middle of a create or a command ----------------------------------

    def create_through(self, restart, label: str, states=("booting", "waiting_for_ip")) -> str:
        """Create a sandbox, `restart()` a service once it is in one of `states`, and check
        the create ended in time, ready and working or in error with a reason: its id."""
        sandbox_id, op_id = self.create_until(states)
        down_at = time.monotonic()
        restart()
        op = self.ended_within_limit(op_id, down_at, label, work_takes=self.boot_seconds)
        self.check_create(op, sandbox_id)
        return sandbox_id

    def command_through(self, sandbox_id: str, restart, label: str) -> None:
        """Run a 12 s command, `restart()` a service while it runs: its request still
        answers, within the minute, with the command's output."""
        command = f"sleep 12; echo slept through {label}"
        answer = self.command_in_background(sandbox_id, command)
        self.wait_until_claimed(command)
        down_at = time.monotonic()
        restart()
        answer["thread"].join(LIMIT)
        TIMINGS[label] = f"answered {time.monotonic() - down_at:.1f} s after the restart began"
        assert answer.get("status") == 200, answer
        finished = answer["body"]["command"]
        assert finished["status"] == "finished", finished
        assert finished["stdout"] == f"slept through {label}\n"

    # ---- what must hold after every restart -----------------------------------------------

    def assert_settled(self) -> None:
        """No open row, and no domain or sandbox directory without a live sandbox."""
        assert (
            self.pg.query(
                "SELECT kind, status, message FROM sandboxes_operation"
                " WHERE status IN ('pending', 'running')"
            )
            == []
        )
        assert self.pg.query("SELECT command FROM sandboxes_command WHERE status = 'running'") == []
        assert self.pg.query("SELECT id FROM sandboxes_diff WHERE status = 'pending'") == []
        assert (
            self.pg.query(
                "SELECT name, state FROM sandboxes_sandbox WHERE state = ANY(%s)",
                list(TRANSITIONAL),
            )
            == []
        )
        live = {
            name
            for (name,) in self.pg.query(
                "SELECT name FROM sandboxes_sandbox WHERE state <> 'destroyed'"
            )
        }
        assert set(our_domains()) <= live, "a domain without a live sandbox"
        workdirs = Path(settings.VSB["SANDBOX_DIR"])
        on_disk = {p.name for p in workdirs.iterdir()} if workdirs.exists() else set()
        assert on_disk <= live, "a sandbox directory without a live sandbox"


@pytest.fixture(scope="module")
def restarts():
    sweep_test_domains()
    shutil.rmtree(settings.VSB["SANDBOX_DIR"], ignore_errors=True)
    root = scratch_dir("/tmp/vsb-restarts-")
    s = RestartStack(root)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        leftovers = sweep_test_domains()
        shutil.rmtree(root, ignore_errors=True)
        print("\nrestart timings:", *(f"  {k}: {v}" for k, v in TIMINGS.items()), sep="\n")
        assert not leftovers, f"test left domains behind: {leftovers}"


@pytest.fixture(scope="module")
def ready(restarts):
    """A ready sandbox the module shares (one boot, which times a boot), destroyed at the end."""
    started = time.monotonic()
    sandbox_id, op_id = restarts.create_until(("ready", "error"))
    assert (
        restarts.poll(f"/v1/operations/{op_id}", lambda b: b["status"] in DONE, 60)["status"]
        == "succeeded"
    )
    restarts.boot_seconds = time.monotonic() - started
    TIMINGS["a create without a restart"] = f"{restarts.boot_seconds:.1f} s"
    yield sandbox_id
    restarts.destroy(sandbox_id)
    restarts.assert_settled()


# ---- Redis and PostgreSQL (the module's own) --------------------------------------------------

RESTART = {
    "redis": lambda s: s.redis.restart(down_for=2),
    "postgres": lambda s: s.pg.restart(down_for=3),
}


@pytest.mark.parametrize("service", RESTART)
def test_a_restart_mid_create_ends_the_create_within_a_minute(restarts, ready, service):
    sandbox_id = restarts.create_through(
        lambda: RESTART[service](restarts), f"{service}, mid-create"
    )
    restarts.destroy(sandbox_id)
    restarts.assert_settled()


def test_a_request_while_postgresql_is_down_is_told_to_try_again_then_answers(restarts):
    restarts.pg.stop()
    try:
        status, body = restarts.api.get("/v1/sandboxes", timeout=30)
        assert status == 503, body
        assert body["error"]["code"] == "database_unavailable", body
    finally:
        restarts.pg.start()
    assert "results" in restarts.poll("/v1/sandboxes", lambda body: True, 30)


@pytest.mark.parametrize("service", RESTART)
def test_a_command_running_through_a_restart_still_answers_with_its_output(
    restarts, ready, service
):
    restarts.command_through(ready, lambda: RESTART[service](restarts), f"{service} mid-command")
    restarts.assert_settled()


def test_a_redis_restart_mid_diff_ends_the_diff_within_a_minute(restarts, ready):
    restarts.api.snapshot(ready, "before-redis")
    restarts.api.run(ready, "echo changed > /root/changed-across-a-redis-restart")
    started = time.monotonic()
    status, body = restarts.api.get(f"/v1/sandboxes/{ready}/diff?from=before-redis", timeout=600)
    assert status == 200, body
    diff_takes = time.monotonic() - started
    TIMINGS["a diff without a restart"] = f"{diff_takes:.1f} s"
    status, body = restarts.api.get(f"/v1/sandboxes/{ready}/diff?from=before-redis&wait=false")
    assert status == 202, body
    op_id = body["operation"]["id"]
    restarts.poll(f"/v1/operations/{op_id}", lambda b: b["status"] != "pending", 30)
    down_at = time.monotonic()
    restarts.redis.restart(down_for=2)
    op = restarts.ended_within_limit(op_id, down_at, "redis, mid-diff", work_takes=diff_takes)
    assert op["status"] == "succeeded", op
    diff = restarts.poll(
        f"/v1/sandboxes/{ready}/diff?diff_id={op['result']['diff_id']}", lambda b: True, 30
    )
    assert "/root/changed-across-a-redis-restart" in str(diff)
    restarts.assert_settled()


# ---- libvirtd --------------------------------------------------------------------------------


def restart_libvirtd(down_for: float) -> None:
    """Stop the machine's libvirtd and start it again as scripts/start-services.sh does
    (under tini, a child subreaper). Guests keep running; libvirtd finds them again."""
    pid = int(Path("/run/libvirtd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "libvirtd did not stop"
        time.sleep(0.1)
    time.sleep(down_for)
    Path("/run/libvirtd.pid").unlink(missing_ok=True)
    with open("/var/log/libvirt/libvirtd-stdout.log", "ab") as log:
        subprocess.Popen(
            ["tini", "-s", "--", "libvirtd"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True
    ).returncode:
        assert time.monotonic() < deadline, "libvirtd did not come back"
        time.sleep(0.2)


def test_a_libvirtd_restart_mid_create_and_under_a_ready_sandbox_loses_nothing(restarts, ready):
    sandbox_id = restarts.create_through(
        lambda: restart_libvirtd(down_for=1),
        "libvirtd, mid-create",
        states=("provisioning", "booting", "waiting_for_ip"),
    )

    # The worker's cached libvirt connection died with libvirtd: it reconnects.
    assert restarts.api.run(ready, "echo after libvirtd")["stdout"] == "after libvirtd\n"
    assert restarts.api.snapshot(ready, "after-libvirtd")["status"] == "ready"
    restarts.destroy(sandbox_id)
    restarts.assert_settled()
