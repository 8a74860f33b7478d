"""ConnectionPool: one live connection per sandbox, fresh certificates for new connections."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from sandboxes.remote.ca import CertificateAuthority
from sandboxes.remote.errors import AuthError, SessionLost
from sandboxes.remote.ssh import ConnectionPool, connect, run

from .conftest import GUEST_PRINCIPAL


class CountingFactory:
    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.ca.issue([GUEST_PRINCIPAL], ttl_seconds=60)


@pytest.fixture
def pool():
    p = ConnectionPool(max_idle_seconds=120)
    yield p
    p.close_all()


def is_closed(client) -> bool:
    transport = client.get_transport()  # SSHClient.close() forgets its transport
    return transport is None or not transport.is_active()


def drop_connection_from_the_server_side(client) -> None:
    """Kill the sshd process that serves this connection, as a rebooting guest would."""
    with pytest.raises(SessionLost) as caught:
        run(client, "kill -KILL $PPID; sleep 5", timeout=5)
    assert caught.value.started and caught.value.transient
    deadline = time.monotonic() + 5
    while client.get_transport().is_active() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert is_closed(client)


def test_it_reuses_one_connection_per_key(guest, pool):
    factory = CountingFactory(guest.ca)
    first = pool.get("sbx-1", guest.target(), factory)
    second = pool.get("sbx-1", guest.target(), factory)
    assert second is first
    assert second.get_transport() is first.get_transport()
    assert factory.calls == 1


def test_it_keeps_separate_connections_for_separate_keys(guest, pool):
    factory = CountingFactory(guest.ca)
    a = pool.get("sbx-1", guest.target(), factory)
    b = pool.get("sbx-2", guest.target(), factory)
    assert a.get_transport() is not b.get_transport()
    assert len(pool) == 2


def test_it_reconnects_with_a_fresh_certificate_after_the_server_drops_it(guest, pool):
    factory = CountingFactory(guest.ca)
    first = pool.get("sbx-1", guest.target(), factory)
    drop_connection_from_the_server_side(first)
    second = pool.get("sbx-1", guest.target(), factory)
    assert second.get_transport() is not first.get_transport()
    assert factory.calls == 2
    assert run(second, "echo back", timeout=5).stdout == b"back\n"


def test_it_retries_a_command_once_when_the_cached_connection_died_before_sending(guest, pool):
    factory = CountingFactory(guest.ca)
    first = pool.get("sbx-1", guest.target(), factory)
    # Closed locally but still cached: the pool only notices when the command cannot start.
    first.get_transport().close()
    result = pool.run("sbx-1", guest.target(), factory, "echo retried", timeout=5)
    assert result.stdout == b"retried\n"
    assert factory.calls == 2


def test_it_reconnects_when_the_guest_became_ready_again_elsewhere(guest, pool):
    """Another process (the lifecycle pool) restored or restarted the guest and could not
    discard this process's connection: the new `ready_at` generation replaces it."""
    factory = CountingFactory(guest.ca)
    booted = datetime(2026, 1, 1, tzinfo=UTC)
    first = pool.get("sbx-1", guest.target(), factory, generation=booted)
    assert pool.get("sbx-1", guest.target(), factory, generation=booted) is first
    second = pool.get("sbx-1", guest.target(), factory, generation=booted + timedelta(1))
    assert second is not first
    assert is_closed(first)
    assert factory.calls == 2


def test_it_reconnects_when_the_target_changes(guest, pool):
    factory = CountingFactory(guest.ca)
    first = pool.get("sbx-1", guest.target(), factory)
    pinned = guest.target(pinned_host_key=guest.host_key_line)
    second = pool.get("sbx-1", pinned, factory)
    assert second is not first
    assert is_closed(first)


def test_it_closes_idle_connections(guest):
    pool = ConnectionPool(max_idle_seconds=0.05)
    try:
        factory = CountingFactory(guest.ca)
        first = pool.get("sbx-1", guest.target(), factory)
        time.sleep(0.1)
        assert pool.close_idle() == 1
        assert is_closed(first)
        assert len(pool) == 0
    finally:
        pool.close_all()


def test_it_does_not_close_a_leased_connection_for_idleness(guest):
    pool = ConnectionPool(max_idle_seconds=0.05)
    try:
        factory = CountingFactory(guest.ca)
        with pool.lease("sbx-1", guest.target(), factory) as client:
            time.sleep(0.1)
            assert pool.close_idle() == 0
            assert run(client, "true", timeout=5).exit_code == 0
    finally:
        pool.close_all()


def test_it_closes_the_connection_on_discard(guest, pool):
    client = pool.get("sbx-1", guest.target(), CountingFactory(guest.ca))
    pool.discard("sbx-1")
    assert is_closed(client)
    assert len(pool) == 0


def test_it_connects_once_when_many_threads_ask_at_once(guest, pool):
    factory = CountingFactory(guest.ca)
    clients = []
    threads = [
        threading.Thread(target=lambda: clients.append(pool.get("sbx-1", guest.target(), factory)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert factory.calls == 1
    assert len({id(c) for c in clients}) == 1


def test_it_keeps_a_cached_connection_working_after_its_certificate_expires(guest, pool):
    # Signed so that it expires two seconds from now: sshd checks it only at login.
    soon = datetime.now(UTC) - timedelta(seconds=58)
    short_lived = CertificateAuthority(guest.ca_key_path, clock=lambda: soon)
    credential = short_lived.issue([GUEST_PRINCIPAL], ttl_seconds=60)
    client = pool.get("sbx-1", guest.target(), lambda: credential)
    time.sleep(max(0.0, (credential.valid_before - datetime.now(UTC)).total_seconds()) + 1.1)
    assert run(client, "echo still-here", timeout=5).stdout == b"still-here\n"
    with pytest.raises(AuthError):
        connect(guest.target(), credential, timeout=5)
