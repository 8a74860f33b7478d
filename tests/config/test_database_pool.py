"""PostgreSQL connections come from one psycopg pool per process (config/settings/base.py
`pooled`), and a thread that waits gives its connection back first (`wakeups.
release_connection`): more requests may wait at once than the pool has connections."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError, connection, connections
from django.db.utils import load_backend

from config.settings.base import pooled
from core import wakeups
from sandboxes.models import Host
from tests.support.stack import free_port


def test_postgresql_is_pooled_with_the_configured_size_and_sqlite_is_not(monkeypatch):
    monkeypatch.setenv("VSB_DB_POOL_SIZE", "7")
    pg = pooled({"ENGINE": "django.db.backends.postgresql", "NAME": "x"})
    assert pg["OPTIONS"]["pool"]["max_size"] == 7
    assert pg["OPTIONS"]["pool"]["timeout"] == 10
    assert "pool" not in pooled({"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}).get(
        "OPTIONS", {}
    )
    monkeypatch.setenv("VSB_DB_POOL_SIZE", "0")
    assert "pool" not in pooled({"ENGINE": "django.db.backends.postgresql", "NAME": "x"}).get(
        "OPTIONS", {}
    )


@pytest.mark.django_db(transaction=True)
def test_more_threads_wait_at_once_than_the_pool_has_connections():
    pool = connection.pool
    assert pool is not None, "the test settings pool PostgreSQL connections"
    waiters = pool.max_size + 10
    all_read = threading.Barrier(waiters + 1)
    go_on = threading.Event()
    failures: list[BaseException] = []

    def waiter() -> None:
        try:
            Host.objects.count()  # a connection from the pool
            wakeups.release_connection()  # then a long wait holds none
            all_read.wait(timeout=30)
            go_on.wait(timeout=30)
            Host.objects.count()  # and one again after it
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
            all_read.abort()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=waiter) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    all_read.wait(timeout=60)  # every thread has read and is waiting: none holds one now
    stats = pool.get_stats()
    assert stats.get("requests_waiting", 0) == 0
    assert stats["pool_size"] <= pool.max_size
    go_on.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures[:3]


def test_a_thread_finds_out_within_seconds_that_postgresql_is_gone(django_db_blocker):
    """A pool whose database refuses connections: the wait for a connection ends in about a
    second with the database's own error, not after the pool's whole timeout."""

    gone = {
        **connection.settings_dict,
        "NAME": "vsb_no_such_database",
        "PORT": str(free_port()),  # nothing listens there
    }
    wrapper = load_backend(gone["ENGINE"]).DatabaseWrapper(gone, alias="gone")
    started = time.monotonic()
    with django_db_blocker.unblock(), pytest.raises(OperationalError, match="connect"):
        wrapper.ensure_connection()
    assert time.monotonic() - started < 5, "the pool's 10 s timeout was waited out"
    wrapper.close_pool()


def test_past_the_pool_s_size_a_thread_opens_a_connection_of_its_own_and_closes_it(
    django_db_blocker,
):
    small = {
        **connection.settings_dict,
        "OPTIONS": {**connection.settings_dict["OPTIONS"], "pool": {"min_size": 1, "max_size": 1}},
    }
    holder = load_backend(small["ENGINE"]).DatabaseWrapper(small, alias="small")
    latecomer = load_backend(small["ENGINE"]).DatabaseWrapper(small, alias="small")
    try:
        with django_db_blocker.unblock():
            holder.ensure_connection()  # the pool's only connection, kept
            started = time.monotonic()
            with latecomer.cursor() as cursor:
                cursor.execute("SELECT 1")
                assert cursor.fetchone() == (1,)
            waited = time.monotonic() - started
            assert getattr(latecomer.connection, "_pool", None) is None, "its own, not the pool's"
            own = latecomer.connection
            latecomer.close()
            assert own.closed and latecomer.connection is None
            assert 0.9 < waited < 5, waited
            assert holder.pool.get_stats()["pool_size"] == 1
    finally:
        latecomer.close()
        holder.close()
        holder.close_pool()
