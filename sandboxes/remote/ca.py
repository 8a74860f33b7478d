"""The SSH certificate authority that lets the service log in to sandbox guests.

Guests trust one CA public key (`TrustedUserCAKeys`) and accept only the principals written
into them at boot, so a certificate for sandbox A cannot open sandbox B. Every connection gets
a fresh keypair and a certificate that lives minutes; nothing long-lived leaves this module.
Signing shells out to `ssh-keygen -s` (no shell, argument list) because it is the reference
implementation of the certificate format that sshd checks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import RemoteError

MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 600
DEFAULT_TTL_SECONDS = 300
# Certificates start this long before they are signed. Guest clocks drift (right after a
# boot from a snapshot), and a paused guest's clock stood still for as long as it was paused
# (hours, when idle sandboxes are never hibernated): its first login after a resume must not
# wait for the guest agent to set the clock. The start protects nothing (the certificate did
# not exist before); its end, `ttl_seconds` after signing, is what limits it.
CLOCK_SKEW_SECONDS = 24 * 3600

# The permits sshd grants by default minus the ones an agent must not have: no tunnels into
# or out of the guest network, no agent or X11 forwarding. PTY stays (interactive terminals).
CERTIFICATE_OPTIONS = ("no-port-forwarding", "no-agent-forwarding", "no-x11-forwarding")

KEY_TYPES = ("ed25519", "ecdsa", "rsa")
MIN_RSA_BITS = 2048
_ACCEPTED_PUBLIC_KEY_TYPES = {
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
}
# A comma would split one principal into two in `ssh-keygen -n`; whitespace would split a
# line of the guest's principals file.
_PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:+-]{0,99}$")
MAX_PRINCIPALS = 32
MAX_IDENTITY_LENGTH = 256
_SSH_KEYGEN_TIMEOUT = 30


class CAError(RemoteError):
    """The CA key is unusable (insecure permissions, unreadable, not a key) or signing
    failed. Permanent: an operator has to fix the key or the host."""

    code = "ca_error"


@dataclass(frozen=True)
class SignedCertificate:
    """A certificate for a public key the caller holds the private half of."""

    certificate: str  # one line, "ssh-ed25519-cert-v01@openssh.com AAAA..."
    serial: int
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    identity: str


@dataclass(frozen=True)
class IssuedCredential(SignedCertificate):
    """A fresh client keypair plus its certificate, ready for `paramiko` (`key`).

    The private key lives only in this object; it is kept out of `repr` so it cannot leak into
    logs or tracebacks.
    """

    key: paramiko.PKey = field(repr=False, kw_only=True)
    private_key: str = field(repr=False, kw_only=True)  # OpenSSH format, unencrypted

    def seconds_left(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return (self.valid_before - now).total_seconds()


def _public_key_fingerprint(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def validate_principals(principals: Sequence[str]) -> tuple[str, ...]:
    if isinstance(principals, str):
        # A bare string would be iterated character by character.
        raise ValueError("principals must be a list of strings, not a string")
    result = tuple(principals)
    if not result:
        raise ValueError("at least one principal is required")
    if len(result) > MAX_PRINCIPALS:
        raise ValueError(f"at most {MAX_PRINCIPALS} principals are allowed")
    for principal in result:
        if not isinstance(principal, str) or not _PRINCIPAL_RE.fullmatch(principal):
            raise ValueError(
                f"invalid principal {principal!r}: use letters, digits and _.@:+- "
                "(no commas or spaces), at most 100 characters"
            )
    return result


def validate_ttl(ttl_seconds: int) -> int:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise ValueError("ttl_seconds must be an integer number of seconds")
    if ttl_seconds < MIN_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be at least {MIN_TTL_SECONDS} (got {ttl_seconds})")
    if ttl_seconds > MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be at most {MAX_TTL_SECONDS} (got {ttl_seconds})")
    return ttl_seconds


def _validate_identity(identity: str) -> str:
    if len(identity) > MAX_IDENTITY_LENGTH:
        raise ValueError(f"identity must be at most {MAX_IDENTITY_LENGTH} characters")
    # sshd writes the identity into its log line; control characters would forge log lines.
    if any(not ch.isprintable() for ch in identity):
        raise ValueError("identity must not contain control characters")
    return identity


def parse_public_key(public_key_line: str) -> tuple[str, bytes]:
    """Check that `public_key_line` is one well-formed OpenSSH public key we accept and
    return (type, blob). Raises ValueError with the reason otherwise."""
    if not isinstance(public_key_line, str):
        raise ValueError("public key must be a string")
    line = public_key_line.strip()
    if not line or "\n" in line or "\r" in line or "\x00" in line:
        raise ValueError("public key must be exactly one line")
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise ValueError("public key must look like '<type> <base64> [comment]'")
    key_type, b64 = parts[0], parts[1]
    if key_type not in _ACCEPTED_PUBLIC_KEY_TYPES:
        raise ValueError(
            f"unsupported public key type {key_type!r}; accepted: "
            + ", ".join(sorted(_ACCEPTED_PUBLIC_KEY_TYPES))
        )
    try:
        blob = base64.b64decode(b64, validate=True)
        key = serialization.load_ssh_public_key(f"{key_type} {b64}".encode())
    except Exception as exc:  # binascii.Error, ValueError, UnsupportedAlgorithm
        raise ValueError(f"malformed {key_type} public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA public key has {key.key_size} bits; at least {MIN_RSA_BITS} are required"
            )
    elif not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError(f"unsupported public key type {key_type!r}")
    return key_type, blob


def _generate_keypair(key_type: str) -> tuple[str, str, type[paramiko.PKey]]:
    """Return (private key in OpenSSH format, public key line, paramiko class)."""
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "ed25519":
        private, cls = ed25519.Ed25519PrivateKey.generate(), paramiko.Ed25519Key
    elif key_type == "ecdsa":
        private, cls = ec.generate_private_key(ec.SECP256R1()), paramiko.ECDSAKey
    elif key_type == "rsa":
        private, cls = rsa.generate_private_key(65537, 3072), paramiko.RSAKey
    else:
        raise ValueError(f"key_type must be one of {', '.join(KEY_TYPES)} (got {key_type!r})")
    private_text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public_line = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private_text, public_line, cls


def _epoch(dt: datetime) -> int:
    return int(dt.timestamp())


class CertificateAuthority:
    """An ed25519 CA key on local disk that signs short-lived user certificates.

    Configuration comes through the constructor; `clock` exists so tests can sign
    certificates that are already expired or not yet valid.
    """

    def __init__(
        self,
        key_path: str,
        *,
        ssh_keygen: str = "ssh-keygen",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.key_path = os.path.abspath(key_path)
        self._ssh_keygen = ssh_keygen
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._public_line: str | None = None

    # -- key lifecycle -------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the CA key on first use, then check that it is safe to use.

        Safe to call from several processes at once: the key is written to a temporary file
        and hard-linked into place, so exactly one generated key wins and nobody ever reads a
        half-written file.
        """
        with self._lock:
            if not os.path.exists(self.key_path):
                self._generate()
            self._check_permissions()
            if self._public_line is None:
                self._public_line = self._load_public_line()

    def _generate(self) -> None:
        parent = os.path.dirname(self.key_path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.chmod(parent, 0o700)  # makedirs honours the umask; make the mode exact
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        fd, tmp = tempfile.mkstemp(prefix=".ca-", dir=parent)  # mkstemp creates 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, self.key_path)
            except FileExistsError:
                return  # another process created it first; use theirs
        finally:
            os.unlink(tmp)
        # The .pub file is a convenience for operators (image builds, debugging); the service
        # itself always derives the public key from the private one.
        with open(self.key_path + ".pub", "wb") as fh:
            fh.write(public + b" virsh-sandbox-ca\n")

    def _check_permissions(self) -> None:
        try:
            st = os.stat(self.key_path)
        except OSError as exc:
            raise CAError(f"CA key {self.key_path} is not accessible: {exc}") from None
        if not os.path.isfile(self.key_path):
            raise CAError(f"CA key {self.key_path} is not a regular file")
        if st.st_mode & 0o077:
            raise CAError(
                f"CA key {self.key_path} has mode {st.st_mode & 0o777:04o}; it must not be "
                f"accessible by group or others (chmod 600 {self.key_path})"
            )

    def _load_public_line(self) -> str:
        try:
            with open(self.key_path, "rb") as fh:
                private = serialization.load_ssh_private_key(fh.read(), password=None)
        except Exception as exc:
            raise CAError(
                f"CA key {self.key_path} is not an unencrypted OpenSSH private key: {exc}"
            ) from None
        line = (
            private.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        return line

    def public_key_line(self) -> str:
        """The CA public key as one `ssh-ed25519 AAAA...` line, for `TrustedUserCAKeys`."""
        self.ensure()
        assert self._public_line is not None
        return self._public_line

    def fingerprint(self) -> str:
        """SHA256 fingerprint of the CA public key, as `ssh-keygen -l` prints it."""
        blob = base64.b64decode(self.public_key_line().split()[1])
        return _public_key_fingerprint(blob)

    # -- signing -------------------------------------------------------------------------

    def issue(
        self,
        principals: Sequence[str],
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        identity: str = "",
        key_type: str = "ed25519",
    ) -> IssuedCredential:
        """Generate a fresh client keypair and certify it for `principals`."""
        principals = validate_principals(principals)
        validate_ttl(ttl_seconds)
        _validate_identity(identity)
        if key_type not in KEY_TYPES:
            raise ValueError(f"key_type must be one of {', '.join(KEY_TYPES)} (got {key_type!r})")
        private_text, public_line, cls = _generate_keypair(key_type)
        signed = self._sign(public_line, principals, ttl_seconds, identity)
        key = cls.from_private_key(io.StringIO(private_text))
        key.load_certificate(signed.certificate)
        return IssuedCredential(**vars(signed), key=key, private_key=private_text)

    def sign_public_key(
        self,
        public_key_line: str,
        principals: Sequence[str],
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        identity: str = "",
    ) -> SignedCertificate:
        """Certify a public key the caller supplies (e.g. an operator's own key)."""
        key_type, blob = parse_public_key(public_key_line)
        principals = validate_principals(principals)
        validate_ttl(ttl_seconds)
        _validate_identity(identity)
        # Re-encode instead of passing the caller's text on, so only the validated key (no
        # comment, no stray bytes) reaches ssh-keygen.
        normalized = f"{key_type} {base64.b64encode(blob).decode()}"
        return self._sign(normalized, principals, ttl_seconds, identity)

    def _sign(
        self,
        public_line: str,
        principals: tuple[str, ...],
        ttl_seconds: int,
        identity: str,
    ) -> SignedCertificate:
        self.ensure()
        now = self._clock().astimezone(UTC).replace(microsecond=0)
        valid_after = now - timedelta(seconds=CLOCK_SKEW_SECONDS)
        valid_before = now + timedelta(seconds=ttl_seconds)
        # 63 bits keeps the serial positive in every signed 64-bit consumer (Postgres bigint).
        serial = secrets.randbits(63) or 1
        workdir = tempfile.mkdtemp(prefix="vsb-sign-")  # mode 0700
        try:
            pub_path = os.path.join(workdir, "key.pub")
            with open(pub_path, "w") as fh:
                fh.write(public_line + "\n")
            argv = [
                self._ssh_keygen,
                "-q",
                "-s",
                self.key_path,
                "-I",
                identity,
                "-n",
                ",".join(principals),
                # Absolute epoch seconds, so the validity we report is exactly the one signed.
                "-V",
                f"0x{_epoch(valid_after):x}:0x{_epoch(valid_before):x}",
                "-z",
                str(serial),
            ]
            for option in CERTIFICATE_OPTIONS:
                argv += ["-O", option]
            argv.append(pub_path)
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=_SSH_KEYGEN_TIMEOUT,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise CAError(f"could not run {self._ssh_keygen}: {exc}") from None
            if proc.returncode != 0:
                detail = proc.stderr.decode(errors="replace").strip()
                raise CAError(f"ssh-keygen failed to sign (exit {proc.returncode}): {detail}")
            with open(os.path.join(workdir, "key-cert.pub")) as fh:
                # ssh-keygen appends the input file's path as a comment; drop it.
                certificate = " ".join(fh.read().split()[:2])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return SignedCertificate(
            certificate, serial, principals, valid_after, valid_before, identity
        )
