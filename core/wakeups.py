"""Wake a waiting API request when the worker finishes something (a command, an operation,
a diff), carrying a small JSON payload.

A Redis list per item: the worker RPUSHes, the request BLPOPs; the database row stays the
truth. One round trip, on a connection pool shared by all threads. Celery's own result
backend is thread-local: daphne runs each request in a fresh thread, so it built a new
backend, connection and pub/sub subscription for every command (about 15 ms of a 70 ms
exec)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import redis
from django.conf import settings

KEY_TTL_SECONDS = 600
T = TypeVar("T")


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    # socket_timeout None: BLPOP waits as long as asked; redis-py 8's default of 5 s would
    # abort any wait longer than that with "Timeout reading".
    return redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30, socket_timeout=None)


def _key(command_id, kind: str) -> str:
    return f"vsb:{kind}-result:{command_id}"


def publish(command_id, fields: dict, kind: str = "command") -> None:
    pipe = _client().pipeline()
    pipe.rpush(_key(command_id, kind), json.dumps(fields))
    pipe.expire(_key(command_id, kind), KEY_TTL_SECONDS)
    pipe.execute()


def wait(command_id, timeout: float, kind: str = "command") -> dict | None:
    """The fields the worker wrote, or None after `timeout` seconds."""
    # Redis takes fractional BLPOP timeouts since 6.0; 0 would mean "forever".
    popped = _client().blpop([_key(command_id, kind)], timeout=max(0.01, timeout))
    return json.loads(popped[1]) if popped else None


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
        value = read()
        if done(value):
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return value
        wait(key, min(recheck, left), kind=kind)
