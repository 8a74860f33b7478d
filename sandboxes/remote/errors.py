"""Typed errors of the SSH layer.

Every error says whether trying again may help (`transient`) or a person has to act. The
service layer retries transient errors with bounded backoff and fails the operation at once
on permanent ones.
"""

from __future__ import annotations


class RemoteError(Exception):
    """Base of every error raised by `sandboxes.remote`."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        # A class default fits most cases; an instance may override it when the same kind
        # of failure can be either (e.g. a DNS failure vs a refused port).
        if transient is not None:
            self.transient = transient


class ConnectError(RemoteError):
    """The guest's sshd is not reachable yet: refused, timed out, reset, banner not yet sent.
    Normal while a VM boots; retry with backoff until the boot deadline."""

    transient = True


class AuthError(RemoteError):
    """sshd rejected our certificate (wrong principal, expired, CA not trusted). Retrying
    with the same CA and principals will not help."""

    transient = False


class HostKeyMismatch(RemoteError):
    """The guest presented a host key other than the pinned one: a different machine answers
    on that address, or the guest was rebuilt. Never retried automatically."""

    transient = False

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

    transient = True

    def __init__(self, message: str, *, started: bool) -> None:
        super().__init__(message)
        self.started = started
