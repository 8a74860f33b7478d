"""Fixtures of the terminals tests: a private tmux server per test module (never the
user's, never the service's), a loopback sshd with SFTP that plays a guest, a host worker
with a ready sandbox whose guest is such an sshd, and the VM stack for the end-to-end
module."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from terminals.tmux_driver import TmuxDriver
from tests.support.sshd import LoopbackSshd, start_sshd

GUEST_PRINCIPAL = "sandbox-term"


def tmux_socket_name(tag: str) -> str:
    return f"vsb-test-{tag}-{os.getpid()}"


def wait_for(fn, timeout: float = 10.0, interval: float = 0.05):
    """`fn()`'s first true value, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout} s; last value: {last!r}")


def terminal_socket(sandbox_id, *headers: tuple[bytes, bytes], query: str = ""):
    """A sandbox's terminal websocket on the real ASGI app, from the page's origin, with
    `headers` (credentials) added."""
    from channels.testing import WebsocketCommunicator

    from config.asgi import application

    path = f"/ws/sandboxes/{sandbox_id}/terminal/" + (f"?{query}" if query else "")
    origin = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    return WebsocketCommunicator(application, path, headers=[*origin, *headers])


@pytest.fixture
def tmux():
    """A TmuxDriver on a socket of its own; its server is killed afterwards, pass or fail."""
    driver = TmuxDriver(tmux_socket_name(f"unit-{uuid.uuid4().hex[:6]}"))
    try:
        yield driver
    finally:
        driver.kill_server()


@pytest.fixture(scope="session")
def sftp_guest(tmp_path_factory) -> LoopbackSshd:
    """A real sshd (with SFTP) on loopback, trusting a test CA for one principal: what a
    sandbox guest looks like to the host, without booting a VM."""
    sshd = start_sshd(
        tmp_path_factory.mktemp("sftp-guest"),
        GUEST_PRINCIPAL,
        extra_config=["Subsystem sftp internal-sftp"],
    )
    try:
        yield sshd
    finally:
        sshd.stop()


# --- a host worker with terminals, without a VM --------------------------------------------

SANDBOX_ID = uuid.uuid4()  # the guest sshd of term_host trusts this sandbox's principal


@pytest.fixture(scope="module")
def term_host(django_db_setup, django_db_blocker, tmp_path_factory):
    """A worker on this host's queue with its relay on a private tmux socket, and a loopback
    sshd that trusts the worker's CA for the sandbox's principal."""
    from django.conf import settings

    from terminals import hostside
    from tests.support import stack

    base = tmp_path_factory.mktemp("term-host")
    (base / "guest").mkdir()
    sshd = start_sshd(
        base / "guest", f"sandbox-{SANDBOX_ID.hex}", extra_config=["Subsystem sftp internal-sftp"]
    )
    socket = tmux_socket_name("host")
    env = {
        "VSB_DRIVER": "fake",
        "VSB_TMUX_SOCKET": socket,
        "VSB_TERMINAL_DIR": str(base / "terminals"),
        "VSB_SSH_CA_KEY": sshd.ca.key_path,
    }
    saved = {k: settings.VSB[k] for k in ("TMUX_SOCKET", "TERMINAL_DIR", "SSH_CA_KEY")}
    settings.VSB.update(
        TMUX_SOCKET=socket, TERMINAL_DIR=str(base / "terminals"), SSH_CA_KEY=sshd.ca.key_path
    )
    stack.flush_test_redis()
    proc = stack.worker(**env)
    proc.start()
    try:
        with django_db_blocker.unblock():
            stack.wait_for_heartbeat(proc)
        yield {"sshd": sshd, "tmux": TmuxDriver(socket), "dir": base / "terminals"}
    finally:
        proc.stop()
        TmuxDriver(socket).kill_server()
        sshd.stop()
        settings.VSB.update(saved)
        hostside._driver.cache_clear()


@pytest.fixture
def ready_sandbox(term_host, alice, host, source):
    """alice's ready sandbox whose guest is the loopback sshd of `term_host`."""
    sandbox = term_host["sshd"].ready_sandbox(SANDBOX_ID, "sbx-term01", alice.user, host, source)
    yield sandbox
    term_host["tmux"].kill_server()


# --- the VM stack ---------------------------------------------------------------------------

FILE_ROOT = "/srv/agent"


@pytest.fixture(scope="module")
def term_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """Like tests/e2e's e2e_stack (the host's worker pools with the libvirt driver and a
    daphne server on the test database), plus what terminals need: a private tmux socket, a credentials
    directory, collected static files for the page, and a file policy confined to
    /srv/agent. Agents e2e-alice and e2e-bob, operator e2e-olivia (staff, with a password)."""
    import shutil
    import subprocess

    from django.conf import settings
    from django.contrib.auth.models import Permission, User
    from django.core.management import call_command

    from tests.e2e.conftest import E2EStack, register_image_and_agents, sweep_test_domains
    from tests.support import stack

    base = tmp_path_factory.mktemp("term-stack")
    static_root = base / "static"
    socket = tmux_socket_name("e2e")
    env = {
        "VSB_DRIVER": "libvirt",
        "VSB_COMMAND_OUTPUT_LIMIT": "65536",
        "VSB_READY_TIMEOUT_SECONDS": "120",
        "VSB_TMUX_SOCKET": socket,
        "VSB_TERMINAL_DIR": str(base / "terminals"),
        "VSB_FILE_ALLOW": FILE_ROOT,
        "VSB_STATIC_ROOT": str(static_root),
    }
    saved = {k: settings.VSB[k] for k in ("TMUX_SOCKET", "FILE_ALLOW", "TERMINAL_DIR")}
    settings.VSB.update(
        TMUX_SOCKET=socket, FILE_ALLOW=[FILE_ROOT], TERMINAL_DIR=str(base / "terminals")
    )
    sweep_test_domains()
    shutil.rmtree(settings.VSB["SANDBOX_DIR"], ignore_errors=True)
    stack.flush_test_redis()
    subprocess.run(
        [str(stack.BIN / "python"), "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=stack.ROOT,
        env=stack.stack_env(**env),
        check=True,
    )
    keys = register_image_and_agents(django_db_blocker)
    with django_db_blocker.unblock():
        olivia = User.objects.create_user("e2e-olivia", password="olivia-pass-1", is_staff=True)
        olivia.user_permissions.add(Permission.objects.get(codename="view_sandbox"))
    workers, web, url = stack.start_servers(**env)
    try:
        stack.wait_for_servers(django_db_blocker, workers, web, url)
        yield E2EStack(
            workers=workers,
            web=web,
            url=url,
            alice=stack.Api(url, keys["e2e-alice"]),
            bob=stack.Api(url, keys["e2e-bob"]),
            keys=keys,
            olivia=olivia,
            blocker=django_db_blocker,
            env=env,
            tmux=TmuxDriver(socket),
        )
    finally:
        web.stop()
        for proc in workers.values():
            proc.stop()
        TmuxDriver(socket).kill_server()
        settings.VSB.update(saved)
        leftovers = sweep_test_domains()
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        assert not leftovers, f"test left domains behind: {leftovers}"
