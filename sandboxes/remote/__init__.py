"""Remote access to sandbox guests: the SSH certificate authority and the SSH client layer.

No Django here; the service layer passes configuration in and gets typed errors out.
"""

from .ca import CAError, CertificateAuthority, IssuedCredential, SignedCertificate
from .errors import AuthError, ConnectError, HostKeyMismatch, RemoteError, SessionLost
from .ssh import (
    CommandResult,
    ConnectionPool,
    SSHTarget,
    connect,
    fingerprint,
    host_key_line,
    presented_host_key,
    probe_ssh_banner,
    run,
)

__all__ = [
    "AuthError",
    "CAError",
    "CertificateAuthority",
    "CommandResult",
    "ConnectError",
    "ConnectionPool",
    "HostKeyMismatch",
    "IssuedCredential",
    "RemoteError",
    "SSHTarget",
    "SessionLost",
    "SignedCertificate",
    "connect",
    "fingerprint",
    "host_key_line",
    "presented_host_key",
    "probe_ssh_banner",
    "run",
]
