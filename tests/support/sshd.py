"""A real sshd on loopback that plays a sandbox guest: it trusts a test CA for one principal
(as root), like a guest booted with `vsb.principals=<principal>`, without booting a VM.
`start_sshd` returns once the banner answers; `LoopbackSshd.stop` ends it, pass or fail."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sandboxes.remote.ca import CertificateAuthority
from sandboxes.remote.ssh import SSHTarget, probe_ssh_banner
from tests.support.stack import free_port

SSHD = "/usr/sbin/sshd"


@dataclass
class LoopbackSshd:
    host: str
    port: int
    host_key_line: str
    ca: CertificateAuthority
    principal: str
    base: Path
    log_path: Path
    proc: subprocess.Popen
    log: IO[bytes]

    @property
    def ca_key_path(self) -> str:
        return self.ca.key_path

    def target(self, **kwargs) -> SSHTarget:
        return SSHTarget(self.host, self.port, **kwargs)

    def ready_sandbox(self, sandbox_id, name: str, owner, host, source):
        """A ready Sandbox row of `owner` whose guest is this sshd (it must trust the
        sandbox's principal, `sandbox-<id hex>`)."""
        from sandboxes.choices import SandboxState
        from sandboxes.models import Sandbox

        return Sandbox.objects.create(
            id=sandbox_id,
            name=name,
            agent_id=owner.get_username(),
            owner=owner,
            host=host,
            source=source,
            state=SandboxState.READY,
            ssh_host=self.host,
            ssh_port=self.port,
            host_key=self.host_key_line,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start_sshd(base: Path, principal: str, extra_config: Sequence[str] = ()) -> LoopbackSshd:
    """An sshd on 127.0.0.1 with its CA, host key, config and log under `base`; root may log
    in with a certificate for `principal` only. `extra_config` lines go after the common ones
    (a Subsystem line, MaxSessions, ...)."""
    if not os.path.exists(SSHD):
        raise RuntimeError("openssh-server is not installed: run scripts/install-system.sh")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    ca = CertificateAuthority(str(base / "ca" / "ca_key"))
    ca.ensure()
    (base / "ca.pub").write_text(ca.public_key_line() + "\n")
    principals = base / "principals"
    principals.mkdir()
    (principals / "root").write_text(principal + "\n")
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
                *extra_config,
                "",
            ]
        )
    )
    host_key = (base / "host_key.pub").read_text().split()
    log_path = base / "sshd.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    sshd = LoopbackSshd(
        host="127.0.0.1",
        port=port,
        host_key_line=f"{host_key[0]} {host_key[1]}",
        ca=ca,
        principal=principal,
        base=Path(base),
        log_path=log_path,
        proc=proc,
        log=log,
    )
    try:
        deadline = time.monotonic() + 10
        while not probe_ssh_banner("127.0.0.1", port, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {log_path.read_text()}")
            time.sleep(0.05)
    except BaseException:
        sshd.stop()
        raise
    return sshd
