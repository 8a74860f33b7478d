"""Waiting for a decision without holding a thread: each waiting ask is a coroutine parked
on an asyncio Future, and one listener task per server process resolves them.

The listener holds one Redis pub/sub subscription (`<prefix>*`) for every waiter of the
process, instead of one blocking channel-layer receive per waiter: 200 waiters cost 200
Futures and one connection. A waiter registers before it reads the row, so a decision made
in between is not missed; it re-reads the row every RECHECK_SECONDS in case a message was
lost (the row is the truth: Redis pub/sub does not keep messages for a listener that was
reconnecting), and expires the request itself when its time is up."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from functools import lru_cache

import redis
import redis.asyncio as aredis
from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from . import services
from .models import ApprovalRequest

log = logging.getLogger(__name__)

RECHECK_SECONDS = 5.0


def channel_prefix() -> str:
    # Pub/sub ignores Redis database numbers: name the deployment (its database) instead,
    # so two installations (or the test suite and a dev server) sharing a Redis stay apart.
    return f"vsb:{settings.DATABASES['default']['NAME']}:approval:"


@lru_cache(maxsize=1)
def _publisher() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30, socket_timeout=10)


def publish_decision(body: dict) -> None:
    """Called after commit with the request's final form."""
    _publisher().publish(channel_prefix() + body["id"].replace("-", ""), json.dumps(body))


class _Listener:
    def __init__(self) -> None:
        self.waiters: dict[str, set[asyncio.Future]] = defaultdict(set)
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribed: asyncio.Event | None = None

    async def ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.loop is not loop:
            self.loop = loop
            self.subscribed = asyncio.Event()
            self.task = loop.create_task(self._run(), name="approval-listener")
        try:
            await asyncio.wait_for(self.subscribed.wait(), timeout=5)
        except TimeoutError:
            log.warning("approval listener not subscribed yet; waiters fall back to polling")

    async def _run(self) -> None:
        prefix = channel_prefix()
        while True:
            client = aredis.Redis.from_url(settings.REDIS_URL, socket_timeout=None)
            pubsub = client.pubsub()
            try:
                await pubsub.psubscribe(prefix + "*")
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    key = message["channel"].decode()[len(prefix) :]
                    body = json.loads(message["data"])
                    for future in list(self.waiters.get(key, ())):
                        if not future.done():
                            future.set_result(body)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - reconnect; waiters poll meanwhile
                log.warning("approval listener lost Redis; reconnecting", exc_info=True)
                self.subscribed.clear()
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()
                await client.aclose()

    def register(self, key: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiters[key].add(future)
        return future

    def unregister(self, key: str, future: asyncio.Future) -> None:
        waiting = self.waiters.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self.waiters[key]


listener = _Listener()


@database_sync_to_async
def _read(request_id) -> dict:
    req = ApprovalRequest.objects.select_related("requested_by", "decided_by").get(pk=request_id)
    return services.as_dict(req)


@database_sync_to_async
def _expire_and_read(request_id) -> dict:
    services.expire(request_id)
    req = ApprovalRequest.objects.select_related("requested_by", "decided_by").get(pk=request_id)
    return services.as_dict(req)


async def wait_for_decision(request_id, expires_at) -> dict:
    await listener.ensure_running()
    key = request_id.hex if hasattr(request_id, "hex") else str(request_id).replace("-", "")
    future = listener.register(key)
    try:
        body = await _read(request_id)
        while body["status"] == "pending":
            remaining = (expires_at - timezone.now()).total_seconds()
            if remaining <= 0:
                body = await _expire_and_read(request_id)
                break
            try:
                body = await asyncio.wait_for(
                    asyncio.shield(future), timeout=min(remaining, RECHECK_SECONDS)
                )
            except TimeoutError:
                body = await _read(request_id)
        return body
    finally:
        listener.unregister(key, future)
