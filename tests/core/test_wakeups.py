"""core.wakeups' async face against the real Redis: a coroutine waits without a thread, on the
process's one subscription, and misses no wake-up published before its first read."""

from __future__ import annotations

import asyncio
import time

import pytest

from core import wakeups

pytestmark = pytest.mark.integration


def reader(values: list, reads: list, on_read=None):
    async def read():
        reads.append(time.monotonic())
        if on_read:
            on_read(len(reads))
        return values[min(len(reads), len(values)) - 1]

    return read


def test_a_wake_up_hands_its_fields_to_the_waiter_without_a_new_read():
    reads: list = []

    async def scenario():
        waiting = asyncio.ensure_future(
            wakeups.await_until(
                reader(["pending"], reads),
                lambda v: v != "pending",
                key="k1",
                kind="test",
                timeout=10,
                recheck=5,
                woken=lambda fields: fields["status"],
            )
        )
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await asyncio.to_thread(wakeups.publish, "k1", {"status": "approved"}, kind="test")
        return await waiting, time.monotonic() - started

    value, took = asyncio.run(scenario())
    assert value == "approved" and took < 1 and len(reads) == 1


def test_a_wake_up_published_before_the_first_read_is_not_missed():
    reads: list = []

    def publish_during_first_read(n: int) -> None:
        if n == 1:
            wakeups.publish("k2", {}, kind="test")

    started = time.monotonic()
    value = asyncio.run(
        wakeups.await_until(
            reader(["pending", "done"], reads, publish_during_first_read),
            lambda v: v == "done",
            key="k2",
            kind="test",
            timeout=10,
            recheck=5,
        )
    )
    assert value == "done" and time.monotonic() - started < 2 and len(reads) == 2


def test_without_a_wake_up_it_re_reads_every_recheck_and_gives_up_at_the_timeout():
    reads: list = []
    started = time.monotonic()
    value = asyncio.run(
        wakeups.await_until(
            reader(["pending"], reads),
            lambda v: v == "done",
            key="k3",
            kind="test",
            timeout=1.2,
            recheck=0.5,
        )
    )
    assert value == "pending" and 1.1 < time.monotonic() - started < 2.5
    assert len(reads) == 4  # the first read, two rechecks and one at the deadline


def test_many_waiters_share_one_subscription_and_each_gets_its_own_wake_up():
    async def scenario():
        waiting = [
            asyncio.ensure_future(
                wakeups.await_until(
                    reader([None], []),
                    lambda v: v is not None,
                    key=f"m{i}",
                    kind="test",
                    timeout=10,
                    recheck=5,
                    woken=lambda fields: fields["i"],
                )
            )
            for i in range(50)
        ]
        await asyncio.sleep(0.3)
        listeners = {wakeups._listener.task}
        assert len(wakeups._listener.waiters) == 50
        for i in range(50):
            await asyncio.to_thread(wakeups.publish, f"m{i}", {"i": i}, kind="test")
        return listeners, await asyncio.gather(*waiting)

    listeners, values = asyncio.run(scenario())
    assert len(listeners) == 1 and values == list(range(50))
    assert not wakeups._listener.waiters


def test_a_waiter_sleeps_out_its_timeout_while_redis_is_away_and_the_caller_re_reads(
    monkeypatch,
):
    """Redis restarting: `wait` answers None after the timeout instead of raising, and
    `wait_until` keeps re-reading the truth until it is done."""
    import redis

    from tests.support.stack import free_port

    away = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    monkeypatch.setattr(wakeups, "_client", lambda: away)
    started = time.monotonic()
    assert wakeups.wait("k-away", 0.3) is None
    # (redis-py itself retries the connection for a few seconds first.)
    assert 0.25 <= time.monotonic() - started < 10

    values = iter(["running", "running", "finished"])
    assert (
        wakeups.wait_until(
            lambda: next(values), lambda v: v == "finished", key="k-away", kind="t", timeout=10,
            recheck=0.1,
        )
        == "finished"
    )  # fmt: skip
