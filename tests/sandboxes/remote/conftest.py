"""A real sshd on loopback that plays a sandbox guest: it trusts our CA for the principal
`sandbox-a` only, like a guest booted with `vsb.principals=sandbox-a`."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxes.remote.ca import CertificateAuthority
from sandboxes.remote.ssh import SSHTarget, probe_ssh_banner

SSHD = "/usr/sbin/sshd"
GUEST_PRINCIPAL = "sandbox-a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Guest:
    host: str
    port: int
    host_key_line: str
    ca: CertificateAuthority
    ca_key_path: str
    log_path: Path

    def target(self, **kwargs) -> SSHTarget:
        return SSHTarget(self.host, self.port, **kwargs)


@pytest.fixture(scope="session")
def guest(tmp_path_factory) -> Guest:
    if not os.path.exists(SSHD):
        raise RuntimeError("openssh-server is not installed: run scripts/install-system.sh")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    base = tmp_path_factory.mktemp("guest")
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
                "MaxSessions 50",
                "MaxStartups 100",
                "LogLevel VERBOSE",
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
        host_key = (base / "host_key.pub").read_text().split()
        yield Guest(
            host="127.0.0.1",
            port=port,
            host_key_line=f"{host_key[0]} {host_key[1]}",
            ca=ca,
            ca_key_path=ca.key_path,
            log_path=log_path,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def client(guest):
    """One authenticated connection shared by the command tests, as the pool would keep it."""
    from sandboxes.remote.ssh import connect

    c = connect(
        guest.target(pinned_host_key=guest.host_key_line), guest.ca.issue([GUEST_PRINCIPAL])
    )
    yield c
    c.close()


@pytest.fixture
def silent_port():
    """A port that accepts TCP and never says anything, like QEMU's forward before sshd."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()
