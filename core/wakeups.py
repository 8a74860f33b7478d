"""Wake a waiting API request when the worker finishes something (a command, an operation,
a diff, a decision), carrying a small JSON payload. `publish` wakes both kinds of waiter:

- a thread (`wait`, `wait_until`): a Redis list per item, the publisher RPUSHes, the request
  BLPOPs; one round trip, on a connection pool shared by all threads. Celery's own result
  backend is thread-local: daphne runs each request in a fresh thread, so it built a new
  backend, connection and pub/sub subscription for every command (about 15 ms of a 70 ms exec);
- a coroutine (`await_until`, the blocking ask): a Redis pub/sub channel per item, read by one
  listener task per process for all its waiters, so a waiter holds no thread and no
  connection of its own: 200 waiters cost 200 queues and one subscription.

Either way the database row stays the truth: waiters re-read it now and then in case a
wake-up was lost."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import TypeVar

import redis
import redis.asyncio as aredis
from django.conf import settings
from django.db import DatabaseError, connections

log = logging.getLogger(__name__)

KEY_TTL_SECONDS = 600
# Threads of one process waiting at once (Redis itself takes 10,000 clients by default).
MAX_WAITERS = 2000
T = TypeVar("T")


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    # socket_timeout None: BLPOP waits as long as asked; redis-py 8's default of 5 s would
    # abort any wait longer than that with "Timeout reading".
    # max_connections: every waiting request holds one connection for its whole wait (a
    # command may run an hour); redis-py's default pool of 100 would fail the 101st.
    return redis.Redis.from_url(
        settings.REDIS_URL,
        health_check_interval=30,
        socket_timeout=None,
        max_connections=MAX_WAITERS,
    )


def _key(command_id, kind: str) -> str:
    return f"vsb:{kind}-result:{command_id}"


def _channel_prefix() -> str:
    # Pub/sub ignores Redis database numbers: name the deployment (its database) instead,
    # so two installations (or the test suite and a dev server) sharing a Redis stay apart.
    return f"vsb:{settings.DATABASES['default']['NAME']}:wake:"


def _channel(key, kind: str) -> str:
    return f"{_channel_prefix()}{kind}:{key}"


def publish(command_id, fields: dict, kind: str = "command") -> None:
    """Wake whoever waits on the item, a thread or a coroutine (one round trip)."""
    body = json.dumps(fields)
    pipe = _client().pipeline()
    pipe.rpush(_key(command_id, kind), body)
    pipe.expire(_key(command_id, kind), KEY_TTL_SECONDS)
    pipe.publish(_channel(command_id, kind), body)
    pipe.execute()


def wait(command_id, timeout: float, kind: str = "command") -> dict | None:
    """The fields the worker wrote, or None after `timeout` seconds. While Redis cannot be
    reached (restarting) it sleeps out the timeout instead and says None: the caller re-reads
    its row, which stays the truth."""
    started = time.monotonic()
    try:
        # Redis takes fractional BLPOP timeouts since 6.0; 0 would mean "forever".
        popped = _client().blpop([_key(command_id, kind)], timeout=max(0.01, timeout))
    except redis.exceptions.RedisError as exc:
        log.warning("wake-ups unavailable (%s); re-reading rows instead", exc)
        time.sleep(max(0.0, min(timeout, 1.0) - (time.monotonic() - started)))
        return None
    return json.loads(popped[1]) if popped else None


def release_connection() -> None:
    """Before a long wait: give this thread's database connection back to the process's
    pool (PostgreSQL), so many waiting requests do not hold as many connections. Inside a
    transaction, or without a pool, the connection stays (reopening costs ~10 ms)."""
    conn = connections["default"]
    if conn.settings_dict.get("OPTIONS", {}).get("pool") and not conn.in_atomic_block:
        conn.close()


def wait_until(
    read: Callable[[], T],
    done: Callable[[T], bool],
    *,
    key,
    kind: str,
    timeout: float,
    recheck: float = 1.0,
) -> T:
    """The one way to wait for work another process finishes: `read()` the truth (a row)
    until `done` holds or `timeout` passes, sleeping on the item's wake-up in between (the
    worker publishes one when it finishes) and re-reading at least every `recheck` seconds
    in case a wake-up was lost. Returns the last value read; the caller decides what a
    timeout means."""
    deadline = time.monotonic() + timeout
    while True:
        value = read_through_restarts(read, deadline, recheck)
        if done(value):
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return value
        release_connection()
        wait(key, min(recheck, left), kind=kind)


def read_through_restarts(read: Callable[[], T], deadline: float, recheck: float = 1.0) -> T:
    """`read()` the row, trying again every `recheck` seconds until `deadline` while the
    database cannot answer (PostgreSQL restarting): a waiting request outlives the restart
    instead of failing with a 500. Inside a transaction it cannot (the transaction is lost)."""
    while True:
        try:
            return read()
        except DatabaseError:
            if connections["default"].in_atomic_block or time.monotonic() + recheck > deadline:
                raise
            log.warning("database unavailable while waiting; trying again", exc_info=True)
            # The broken connection is not reopened by itself: close it, the next query connects.
            connections.close_all()
            time.sleep(recheck)


class _Listener:
    """The process's one pub/sub subscription, handing each wake-up to the queues of the
    coroutines waiting on its item. Started on first use in the running event loop."""

    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribed = asyncio.Event()

    async def ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.loop is not loop:
            self.loop = loop
            self.subscribed = asyncio.Event()
            self.task = loop.create_task(self._run(), name="wakeup-listener")
        try:
            await asyncio.wait_for(self.subscribed.wait(), timeout=5)
        except TimeoutError:
            log.warning("wake-up listener not subscribed yet; waiters fall back to polling")

    async def _run(self) -> None:
        prefix = _channel_prefix()
        while True:
            client = aredis.Redis.from_url(settings.REDIS_URL, socket_timeout=None)
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(prefix + "*")
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    queues = self.waiters.get(message["channel"].decode(), ())
                    fields = json.loads(message["data"]) if queues else None
                    for queue in list(queues):
                        queue.put_nowait(fields)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect; waiters re-read meanwhile
                log.warning("wake-up listener lost Redis; reconnecting", exc_info=True)
                self.subscribed.clear()
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()
                await client.aclose()

    def register(self, channel: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self.waiters[channel].add(queue)
        return queue

    def unregister(self, channel: str, queue: asyncio.Queue) -> None:
        waiting = self.waiters.get(channel)
        if waiting is not None:
            waiting.discard(queue)
            if not waiting:
                del self.waiters[channel]


_listener = _Listener()


async def await_until(
    read: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    key,
    kind: str,
    timeout: float,
    recheck: float = 1.0,
    woken: Callable[[dict], T] | None = None,
) -> T:
    """`wait_until` for a coroutine: awaits `read()` until `done` holds or `timeout` passes,
    parked on the process's one subscription in between (no thread held), re-reading at
    least every `recheck` seconds. It listens before the first read, so a wake-up published
    in between is not missed. With `woken`, a wake-up's fields become the value instead of
    a new read (a publisher that sends the row's final form after commit: 200 waiters woken
    at once cost no queries). Returns the last value; the caller decides what a timeout
    means."""
    channel = _channel(key, kind)
    await _listener.ensure_running()
    inbox = _listener.register(channel)
    try:
        deadline = time.monotonic() + timeout
        value = await read()
        while not done(value) and (left := deadline - time.monotonic()) > 0:
            try:
                fields = await asyncio.wait_for(inbox.get(), timeout=min(recheck, left))
            except TimeoutError:
                fields = None
            value = woken(fields) if woken and fields is not None else await read()
        return value
    finally:
        _listener.unregister(channel, inbox)
