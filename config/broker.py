"""Celery's broker transport: kombu's Redis transport with one repair, so that a worker
survives a Redis restart (settings: CELERY_BROKER_TRANSPORT).

When the broker connection drops, the worker's consumer closes its channel and opens a new
one. Two things then still use the old, closed channel: closing it hands the messages it
holds unacknowledged (a countdown task waiting in the worker) back to their queues, and a
task that ran through the restart with acks_late acknowledges its message on it when it
ends. In kombu 5.7 both read the connection the channel has already let go of: an
AttributeError, which escapes Celery's handling of connection errors and ends the worker
("Unrecoverable error"), so one Redis restart stopped every host's worker. Here a closed
channel says so with a connection error, which Celery handles: the hand-back is skipped and
the late ack is logged ("Couldn't ack"). Those messages stay in Redis's unacked set (kept
across the restart by the append-only file) and come back after the visibility timeout, to
find their work done: it was sent again long before by the resend-lost-work sweep
(docs/architecture.md, "Restarts")."""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client=None):
        try:
            return super().restore_unacked(client)
        except RedisConnectionError:
            log.warning(
                "broker connection lost: %d unacknowledged message(s) stay in Redis until "
                "the visibility timeout; lost work is sent again by the resend-lost-work sweep",
                len(self._delivered),
            )
            return None


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _connparams(self, asynchronous=False):
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("this broker channel was closed with its connection")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
