"""Integration ring: PostgreSQL, Redis and a real Celery worker process (fake hypervisor
driver inside the worker), driven through the service layer of this process."""

from __future__ import annotations

import pytest

from tests.support import stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fake_worker(django_db_setup, django_db_blocker):
    stack.flush_test_redis()
    proc = stack.worker(VSB_DRIVER="fake")
    proc.start()
    try:
        with django_db_blocker.unblock():
            stack.wait_for_heartbeat(proc)
        yield proc
    finally:
        proc.stop()
