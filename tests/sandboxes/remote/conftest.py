"""A real sshd on loopback that plays a sandbox guest: it trusts our CA for the principal
`sandbox-a` only, like a guest booted with `vsb.principals=sandbox-a`."""

from __future__ import annotations

import socket

import pytest

from tests.support.sshd import LoopbackSshd, start_sshd

GUEST_PRINCIPAL = "sandbox-a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def guest(tmp_path_factory) -> LoopbackSshd:
    sshd = start_sshd(
        tmp_path_factory.mktemp("guest"),
        GUEST_PRINCIPAL,
        extra_config=["MaxSessions 50", "MaxStartups 100", "LogLevel VERBOSE"],
    )
    try:
        yield sshd
    finally:
        sshd.stop()


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
