"""Bytes between the web server and a host's worker (uploads and downloads): one Redis key
each, living minutes, read once. Celery messages stay small, and neither side needs a
filesystem the other can see."""

from __future__ import annotations

import secrets
from functools import lru_cache

import redis
from django.conf import settings

TTL_SECONDS = 300


@lru_cache(maxsize=1)
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, health_check_interval=30, socket_timeout=None)


def put(data: bytes) -> str:
    key = f"vsb:blob:{secrets.token_hex(16)}"
    _client().set(key, data, ex=TTL_SECONDS)
    return key


def take(key: str) -> bytes | None:
    if not key.startswith("vsb:blob:"):
        return None
    return _client().getdel(key)
