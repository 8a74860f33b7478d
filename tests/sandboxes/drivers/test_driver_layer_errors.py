"""The driver layer's errors (hypervisor drivers and the SSH layer) belong to the one hierarchy
in core.errors: each is an Error with a stable code that says whether a retry may help."""

from __future__ import annotations

import pytest

from core.errors import Error
from sandboxes.drivers.base import (
    DomainNotFound,
    DriverError,
    PermanentDriverError,
    SnapshotNotFound,
    SourceNotUsable,
    TransientDriverError,
)
from sandboxes.remote.ca import CAError
from sandboxes.remote.errors import (
    AuthError,
    ConnectError,
    HostKeyMismatch,
    RemoteError,
    SessionLost,
)

CASES = [
    (DriverError, {}, "driver_error", False),
    (TransientDriverError, {}, "driver_error", True),
    (PermanentDriverError, {}, "driver_error", False),
    (DomainNotFound, {}, "domain_not_found", False),
    (SourceNotUsable, {}, "source_not_usable", False),
    (SnapshotNotFound, {}, "snapshot_not_found", False),
    (RemoteError, {}, "remote_error", False),
    (ConnectError, {}, "connect_failed", True),
    (ConnectError, {"transient": False}, "connect_failed", False),
    (AuthError, {}, "auth_failed", False),
    (SessionLost, {"started": True}, "session_lost", True),
    (CAError, {}, "ca_error", False),
]


@pytest.mark.parametrize(("cls", "kwargs", "code", "transient"), CASES)
def test_it_is_an_error_of_the_one_hierarchy(cls, kwargs, code, transient):
    exc = cls("the host said no", **kwargs)
    assert isinstance(exc, Error)
    assert (str(exc), exc.message, exc.code, exc.transient) == (
        "the host said no",
        "the host said no",
        code,
        transient,
    )


def test_it_keeps_the_details_of_a_host_key_mismatch():
    exc = HostKeyMismatch("127.0.0.1", 2222, "SHA256:a", "SHA256:b")
    assert isinstance(exc, RemoteError) and not exc.transient
    assert exc.code == "host_key_mismatch"
    assert str(exc) == "host key mismatch for 127.0.0.1:2222: expected SHA256:a, presented SHA256:b"
    assert (exc.host, exc.port, exc.expected, exc.presented) == (
        "127.0.0.1",
        2222,
        "SHA256:a",
        "SHA256:b",
    )
