"""connect() and probe_ssh_banner(): who may log in, which host we accept, and how failures
are classified (transient vs permanent)."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from sandboxes.remote.ca import CertificateAuthority
from sandboxes.remote.errors import AuthError, ConnectError, HostKeyMismatch
from sandboxes.remote.ssh import (
    SSHTarget,
    connect,
    fingerprint,
    host_key_line,
    presented_host_key,
    probe_ssh_banner,
    run,
)

from .conftest import GUEST_PRINCIPAL, free_port


def test_it_logs_in_with_a_certificate_for_the_guest_principal(guest):
    client = connect(guest.target(), guest.ca.issue([GUEST_PRINCIPAL]), timeout=5)
    try:
        assert run(client, "id -un", timeout=5).stdout == b"root\n"
    finally:
        client.close()


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_it_logs_in_with_ecdsa_and_rsa_certificates_too(guest, key_type):
    credential = guest.ca.issue([GUEST_PRINCIPAL], key_type=key_type)
    client = connect(guest.target(), credential, timeout=5)
    client.close()


def test_it_logs_in_with_a_signed_caller_supplied_key(guest):
    own_key = paramiko.Ed25519Key.from_private_key(_new_ed25519_pem())
    signed = guest.ca.sign_public_key(host_key_line(own_key), [GUEST_PRINCIPAL])
    own_key.load_certificate(signed.certificate)
    credential = type("Credential", (), {"key": own_key})()
    connect(guest.target(), credential, timeout=5).close()


def test_it_refuses_a_certificate_for_another_principal(guest):
    with pytest.raises(AuthError) as caught:
        connect(guest.target(), guest.ca.issue(["sandbox-b"]), timeout=5)
    assert not caught.value.transient


def test_it_refuses_an_expired_certificate(guest):
    twenty_minutes_ago = datetime.now(UTC) - timedelta(minutes=20)
    past = CertificateAuthority(guest.ca_key_path, clock=lambda: twenty_minutes_ago)
    credential = past.issue([GUEST_PRINCIPAL], ttl_seconds=300)
    assert credential.valid_before < datetime.now(UTC)
    with pytest.raises(AuthError):
        connect(guest.target(), credential, timeout=5)


def test_it_refuses_a_certificate_from_another_ca(guest, tmp_path):
    stranger = CertificateAuthority(str(tmp_path / "other" / "ca_key"))
    with pytest.raises(AuthError):
        connect(guest.target(), stranger.issue([GUEST_PRINCIPAL]), timeout=5)


def test_it_exposes_the_presented_host_key_for_trust_on_first_use(guest):
    client = connect(guest.target(), guest.ca.issue([GUEST_PRINCIPAL]), timeout=5)
    try:
        assert presented_host_key(client) == guest.host_key_line
    finally:
        client.close()


def test_it_accepts_the_pinned_host_key(guest):
    target = guest.target(pinned_host_key=guest.host_key_line + " root@guest")
    connect(target, guest.ca.issue([GUEST_PRINCIPAL]), timeout=5).close()


def test_it_refuses_a_host_that_presents_another_key_than_the_pinned_one(guest):
    other = host_key_line(paramiko.Ed25519Key.from_private_key(_new_ed25519_pem()))
    with pytest.raises(HostKeyMismatch) as caught:
        connect(guest.target(pinned_host_key=other), guest.ca.issue([GUEST_PRINCIPAL]), timeout=5)
    error = caught.value
    assert not error.transient
    assert error.expected == fingerprint(other)
    assert error.presented == fingerprint(guest.host_key_line)
    assert fingerprint(other) in str(error) and fingerprint(guest.host_key_line) in str(error)


def test_it_refuses_a_host_without_a_key_of_the_pinned_type(guest):
    pinned = host_key_line(paramiko.ECDSAKey.generate())
    with pytest.raises(HostKeyMismatch, match=re.escape(fingerprint(pinned))):
        connect(guest.target(pinned_host_key=pinned), guest.ca.issue([GUEST_PRINCIPAL]), timeout=5)


def test_it_refuses_a_malformed_pinned_host_key(guest):
    with pytest.raises(ValueError, match="host key"):
        connect(guest.target(pinned_host_key="nonsense"), guest.ca.issue([GUEST_PRINCIPAL]))


def test_it_reports_a_closed_port_as_a_transient_connect_error(guest):
    with pytest.raises(ConnectError) as caught:
        connect(SSHTarget("127.0.0.1", free_port()), guest.ca.issue([GUEST_PRINCIPAL]))
    assert caught.value.transient


def test_it_reports_a_silent_port_as_a_transient_connect_error(guest, silent_port):
    target = SSHTarget("127.0.0.1", silent_port)
    with pytest.raises(ConnectError) as caught:
        connect(target, guest.ca.issue([GUEST_PRINCIPAL]), timeout=0.5)
    assert caught.value.transient


def test_it_sees_the_banner_only_where_sshd_answers(guest, silent_port):
    assert probe_ssh_banner(guest.host, guest.port) is True
    assert probe_ssh_banner("127.0.0.1", free_port()) is False
    assert probe_ssh_banner("127.0.0.1", silent_port, timeout=0.3) is False


def test_it_does_not_take_a_non_ssh_greeting_for_a_banner():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def greet():
        conn, _ = srv.accept()
        conn.sendall(b"220 smtp.example ESMTP\r\n")
        conn.close()

    t = threading.Thread(target=greet)
    t.start()
    try:
        assert probe_ssh_banner("127.0.0.1", port, timeout=1) is False
    finally:
        t.join(2)
        srv.close()


def test_it_computes_fingerprints_like_ssh_keygen(guest):
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", "/dev/stdin"],
        input=guest.host_key_line,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split()[1] == fingerprint(guest.host_key_line)


def _new_ed25519_pem() -> io.StringIO:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return io.StringIO(pem.decode())
