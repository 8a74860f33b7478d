"""Fixtures of the terminals tests: a private tmux server per test module (never the
user's, never the service's), a loopback sshd with SFTP that plays a guest, and the VM
stack for the end-to-end module."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from sandboxes.remote.ca import CertificateAuthority
from sandboxes.remote.ssh import probe_ssh_banner
from terminals.tmux_driver import TmuxDriver
from tests.support.stack import free_port

SSHD = "/usr/sbin/sshd"
GUEST_PRINCIPAL = "sandbox-term"


def tmux_socket_name(tag: str) -> str:
    return f"vsb-test-{tag}-{os.getpid()}"


@pytest.fixture
def tmux():
    """A TmuxDriver on a socket of its own; its server is killed afterwards, pass or fail."""
    driver = TmuxDriver(tmux_socket_name(f"unit-{uuid.uuid4().hex[:6]}"))
    try:
        yield driver
    finally:
        driver.kill_server()


class SftpGuest:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.fixture(scope="session")
def sftp_guest(tmp_path_factory):
    """A real sshd (with SFTP) on loopback, trusting a test CA for one principal: what a
    sandbox guest looks like to the host, without booting a VM."""
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    base = tmp_path_factory.mktemp("sftp-guest")
    ca = CertificateAuthority(str(base / "ca" / "ca_key"))
    ca.ensure()
    (base / "ca.pub").write_text(ca.public_key_line() + "\n")
    principals = base / "principals"
    principals.mkdir()
    (principals / "root").write_text(GUEST_PRINCIPAL + "\n")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key")], check=True
    )
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {base / 'host_key'}",
                f"TrustedUserCAKeys {base / 'ca.pub'}",
                f"AuthorizedPrincipalsFile {principals}/%u",
                "AuthorizedKeysFile none",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "PidFile none",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    log_path = base / "sshd.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not probe_ssh_banner("127.0.0.1", port, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {log_path.read_text()}")
            time.sleep(0.05)
        key = (base / "host_key.pub").read_text().split()
        yield SftpGuest(
            host="127.0.0.1",
            port=port,
            host_key=f"{key[0]} {key[1]}",
            ca=ca,
            principal=GUEST_PRINCIPAL,
            base=Path(base),
        )
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- the VM stack ---------------------------------------------------------------------------

FILE_ROOT = "/srv/agent"


@pytest.fixture(scope="module")
def term_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    """Like tests/e2e's e2e_stack (a worker with the libvirt driver and a daphne server on
    the test database), plus what terminals need: a private tmux socket, a credentials
    directory, collected static files for the page, and a file policy confined to
    /srv/agent. Agents e2e-alice and e2e-bob, operator e2e-olivia (staff, with a password)."""
    import json as _json
    import shutil

    from django.conf import settings
    from django.contrib.auth.models import Permission, User
    from django.core.management import call_command

    from sandboxes import services, sources
    from tests.e2e.conftest import E2EStack, image_dir, sweep_test_domains
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
    manifest = _json.loads((image_dir() / "manifest.json").read_text())
    with django_db_blocker.unblock():
        sources.register_image("debian-base", image_dir(), manifest)
        keys = {}
        for name in ("e2e-alice", "e2e-bob"):
            user, _ = User.objects.get_or_create(username=name)
            keys[name] = services.create_api_key(user, "e2e")[1]
        olivia = User.objects.create_user("e2e-olivia", password="olivia-pass-1", is_staff=True)
        olivia.user_permissions.add(Permission.objects.get(codename="view_sandbox"))
    worker = stack.worker(**env)
    worker.start()
    port = stack.free_port()
    web = stack.daphne(port, **env)
    web.start()
    handle = None
    try:
        with django_db_blocker.unblock():
            stack.wait_for_heartbeat(worker)
        stack.wait_for_http(f"http://127.0.0.1:{port}/v1/health", web)
        handle = E2EStack(
            worker=worker,
            web=web,
            url=f"http://127.0.0.1:{port}",
            alice=stack.Api(f"http://127.0.0.1:{port}", keys["e2e-alice"]),
            bob=stack.Api(f"http://127.0.0.1:{port}", keys["e2e-bob"]),
            keys=keys,
            olivia=olivia,
            blocker=django_db_blocker,
            env=env,
            tmux=TmuxDriver(socket),
        )
        yield handle
    finally:
        web.stop()
        worker.stop()
        TmuxDriver(socket).kill_server()
        settings.VSB.update(saved)
        leftovers = sweep_test_domains()
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
        assert not leftovers, f"test left domains behind: {leftovers}"
