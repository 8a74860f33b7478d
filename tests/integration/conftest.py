"""Integration ring: PostgreSQL, Redis and a real Celery worker process (fake hypervisor
driver inside the worker), driven through the service layer of this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support import stack

pytestmark = pytest.mark.integration


@contextmanager
def host_worker(django_db_blocker, **env: str) -> Iterator[stack.Proc]:
    """A worker process on this host's queue (fake hypervisor driver, `env` on top), up
    once its heartbeat is in; stopped afterwards, pass or fail."""
    stack.flush_test_redis()
    proc = stack.worker(VSB_DRIVER="fake", **env)
    proc.start()
    try:
        with django_db_blocker.unblock():
            stack.wait_for_heartbeat(proc)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def fake_worker(django_db_setup, django_db_blocker):
    with host_worker(django_db_blocker) as proc:
        yield proc
