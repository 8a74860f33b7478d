"""The certificate authority: key lifecycle, certificate contents, input validation."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sandboxes.remote.ca import CLOCK_SKEW_SECONDS, CAError, CertificateAuthority


def public_line(private) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def describe(certificate: str, tmp_path) -> str:
    path = tmp_path / "cert.pub"
    path.write_text(certificate + "\n")
    return subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def ca(tmp_path) -> CertificateAuthority:
    return CertificateAuthority(str(tmp_path / "ca" / "ca_key"))


def test_it_creates_a_private_ca_key_on_first_use(ca, tmp_path):
    ca.ensure()
    assert stat.S_IMODE(os.stat(tmp_path / "ca").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca.key_path).st_mode) == 0o600
    assert ca.public_key_line().startswith("ssh-ed25519 AAAA")
    assert "PRIVATE" not in ca.public_key_line()


def test_it_keeps_an_existing_ca_key(ca, tmp_path):
    first = ca.public_key_line()
    again = CertificateAuthority(ca.key_path)
    assert again.public_key_line() == first


def test_it_reports_the_same_fingerprint_as_ssh_keygen(ca, tmp_path):
    ca.ensure()
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", ca.key_path + ".pub"], check=True, capture_output=True, text=True
    ).stdout
    assert out.split()[1] == ca.fingerprint()


def test_it_creates_one_key_when_several_processes_start_at_once(tmp_path):
    path = str(tmp_path / "ca" / "ca_key")
    lines: list[str] = []
    cas = [CertificateAuthority(path) for _ in range(8)]
    threads = [threading.Thread(target=lambda c=c: lines.append(c.public_key_line())) for c in cas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(lines)) == 1


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_it_refuses_a_ca_key_readable_by_group_or_others(ca, mode):
    ca.ensure()
    os.chmod(ca.key_path, mode)
    fresh = CertificateAuthority(ca.key_path)
    with pytest.raises(CAError, match=f"mode {mode:04o}.*chmod 600"):
        fresh.ensure()
    with pytest.raises(CAError):
        fresh.issue(["sandbox-a"])


def test_it_accepts_a_read_only_ca_key(ca):
    ca.ensure()
    os.chmod(ca.key_path, 0o400)
    assert CertificateAuthority(ca.key_path).issue(["sandbox-a"]).serial > 0


def test_it_refuses_a_ca_key_that_is_not_a_key(tmp_path):
    path = tmp_path / "ca_key"
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(CAError, match="not an unencrypted OpenSSH private key"):
        CertificateAuthority(str(path)).ensure()


def test_it_issues_a_certificate_with_the_promised_contents(ca, tmp_path):
    before = datetime.now(UTC).replace(microsecond=0)
    cred = ca.issue(["sandbox-a", "root"], ttl_seconds=120, identity="agent:alice sbx:42")
    after = datetime.now(UTC)
    assert cred.certificate.startswith("ssh-ed25519-cert-v01@openssh.com AAAA")
    assert len(cred.certificate.split()) == 2  # no temp path leaked as a comment
    assert cred.principals == ("sandbox-a", "root")
    assert cred.identity == "agent:alice sbx:42"
    assert cred.valid_after.tzinfo is not None
    # A day back: a paused guest's clock stood still (sandboxes/remote/ca.py).
    skew = timedelta(seconds=CLOCK_SKEW_SECONDS)
    assert skew == timedelta(days=1)
    assert before - skew <= cred.valid_after <= after - skew + timedelta(seconds=1)
    assert cred.valid_before - cred.valid_after == timedelta(seconds=120) + skew
    assert 0 < cred.serial < 2**63
    assert cred.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert "BEGIN" not in repr(cred)
    assert cred.key.public_blob is not None  # certificate loaded into the paramiko key

    text = describe(cred.certificate, tmp_path)
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in text
    assert 'Key ID: "agent:alice sbx:42"' in text
    assert f"Serial: {cred.serial}" in text
    assert f"Signing CA: ED25519 {ca.fingerprint()}" in text
    principals = text.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["sandbox-a", "root"]
    extensions = text.split("Extensions:")[1].split()
    assert extensions == ["permit-pty", "permit-user-rc"]
    local = cred.valid_after.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    assert f"Valid: from {local} to " in text


def test_it_uses_a_fresh_key_and_serial_for_every_certificate(ca):
    a, b = ca.issue(["sandbox-a"]), ca.issue(["sandbox-a"])
    assert a.serial != b.serial
    assert a.key.get_base64() != b.key.get_base64()


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_it_issues_each_supported_key_type(ca, key_type):
    cred = ca.issue(["sandbox-a"], key_type=key_type)
    assert cred.key.public_blob is not None


def test_it_refuses_an_unknown_key_type(ca):
    with pytest.raises(ValueError, match="key_type"):
        ca.issue(["sandbox-a"], key_type="dsa")


@pytest.mark.parametrize(
    ("ttl", "bound"),
    [(59, "at least 60"), (0, "at least 60"), (601, "at most 600"), (3600, "at most 600")],
)
def test_it_refuses_a_ttl_outside_the_bounds(ca, ttl, bound):
    with pytest.raises(ValueError, match=bound):
        ca.issue(["sandbox-a"], ttl_seconds=ttl)


@pytest.mark.parametrize("ttl", [60, 600])
def test_it_accepts_the_ttl_bounds_themselves(ca, ttl):
    cred = ca.issue(["sandbox-a"], ttl_seconds=ttl)
    assert (cred.valid_before - cred.valid_after).total_seconds() == ttl + CLOCK_SKEW_SECONDS


@pytest.mark.parametrize("principals", [[], ["a,b"], ["with space"], [""], "sandbox-a", ["x\n"]])
def test_it_refuses_bad_principals(ca, principals):
    with pytest.raises(ValueError, match="principal"):
        ca.issue(principals)


def test_it_refuses_an_identity_with_control_characters(ca):
    with pytest.raises(ValueError, match="control characters"):
        ca.issue(["sandbox-a"], identity="alice\nAccepted publickey for root")


def test_it_removes_its_private_temp_dir_also_when_signing_fails(ca, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ca.issue(["sandbox-a"])
    assert list(scratch.iterdir()) == []
    broken = CertificateAuthority(ca.key_path, ssh_keygen="/bin/false")
    with pytest.raises(CAError, match="ssh-keygen failed"):
        broken.issue(["sandbox-a"])
    assert list(scratch.iterdir()) == []


def test_it_signs_a_caller_supplied_public_key(ca, tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    signed = ca.sign_public_key(
        public_line(key) + " operator@laptop", ["sandbox-a"], ttl_seconds=60, identity="op"
    )
    assert signed.certificate.startswith("ssh-ed25519-cert-v01@openssh.com ")
    assert signed.principals == ("sandbox-a",)
    text = describe(signed.certificate, tmp_path)
    assert 'Key ID: "op"' in text


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP384R1()),
        lambda: rsa.generate_private_key(65537, 2048),
    ],
)
def test_it_signs_ecdsa_and_rsa_public_keys(ca, make):
    assert ca.sign_public_key(public_line(make()), ["sandbox-a"]).serial > 0


def test_it_refuses_malformed_or_weak_public_keys(ca):
    good = public_line(ed25519.Ed25519PrivateKey.generate())
    weak_rsa = public_line(rsa.generate_private_key(65537, 1024))
    cert = ca.issue(["sandbox-a"]).certificate
    cases = {
        "": "one line",
        "garbage": "<type> <base64>",
        good + "\n" + good: "one line",
        "ssh-dss AAAAB3NzaC1kc3M=": "unsupported",
        cert: "unsupported",
        "ssh-ed25519 not*base64": "malformed",
        "ssh-rsa " + good.split()[1]: "malformed",  # type and blob disagree
        weak_rsa: "at least 2048",
    }
    for line, reason in cases.items():
        with pytest.raises(ValueError, match=reason):
            ca.sign_public_key(line, ["sandbox-a"])
