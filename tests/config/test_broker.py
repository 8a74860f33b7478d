"""config/broker.py: after the broker connection was lost, the worker's old channel closes
although it held unacknowledged messages, and a late ack on it is a connection error that
Celery logs (kombu 5.7's own Redis transport raises AttributeError in both places, and the
worker dies of it). The e2e ring restarts a real Redis under a real worker
(tests/e2e/test_restarts.py)."""

from __future__ import annotations

import pytest
from django.conf import settings
from kombu import Connection
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from config.broker import Transport

pytestmark = pytest.mark.integration


def close_after_losing_the_connection(transport):
    """Close a channel holding a message as the consumer does after losing the broker; the
    closed channel."""
    conn = Connection(settings.CELERY_BROKER_URL, transport=transport)
    channel = conn.default_channel
    channel.qos._delivered["a-task-being-run"] = object()
    channel.connection.client = None  # what the consumer's connection has let go of by then
    channel.close()
    return channel


def test_the_settings_use_the_repaired_transport():
    assert settings.CELERY_BROKER_TRANSPORT == "config.broker:Transport"


def test_a_channel_holding_unacked_messages_closes_after_the_connection_is_gone():
    with pytest.raises(AttributeError):
        close_after_losing_the_connection(kombu_redis.Transport)  # the bug, still there
    close_after_losing_the_connection(Transport)


def test_a_late_ack_on_the_closed_channel_is_a_connection_error_celery_logs():
    closed = close_after_losing_the_connection(Transport)
    assert closed.connection is None
    with pytest.raises(RedisConnectionError):
        closed.qos.ack("a-task-being-run")
    assert RedisConnectionError in Transport.connection_errors, "what Celery catches on ack"
