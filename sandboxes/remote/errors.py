"""Typed errors of the SSH layer, part of the one hierarchy in `core.errors`.

Every error says whether trying again may help (`transient`) or a person has to act, and
carries a stable `code`. The service layer retries transient errors with bounded backoff and fails the operation at once
on permanent ones.
"""

from __future__ import annotations

from core.errors import Error


class RemoteError(Error):
    """Base of every error raised by `sandboxes.remote`. An instance may override the class's
    `transient` when the same kind of failure can be either (a DNS failure vs a refused port)."""

    code = "remote_error"


class ConnectError(RemoteError):
    """The guest's sshd is not reachable yet: refused, timed out, reset, banner not yet sent.
    Normal while a VM boots; retry with backoff until the boot deadline."""

    code = "connect_failed"
    transient = True


class AuthError(RemoteError):
    """sshd rejected our certificate (wrong principal, expired, CA not trusted). Retrying
    with the same CA and principals will not help."""

    code = "auth_failed"


class HostKeyMismatch(RemoteError):
    """The guest presented a host key other than the pinned one: a different machine answers
    on that address, or the guest was rebuilt. Never retried automatically."""

    code = "host_key_mismatch"

    def __init__(self, host: str, port: int, expected: str, presented: str) -> None:
        super().__init__(
            f"host key mismatch for {host}:{port}: expected {expected}, presented {presented}"
        )
        self.host = host
        self.port = port
        self.expected = expected
        self.presented = presented


class SessionLost(RemoteError):
    """The SSH connection died while opening a channel or running a command.

    `started` is False when the failure happened before the command was sent, so a retry on a
    fresh connection cannot run it twice; when True the command may or may not have run.
    """

    code = "session_lost"
    transient = True

    def __init__(self, message: str, *, started: bool) -> None:
        super().__init__(message)
        self.started = started
