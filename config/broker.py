"""Celery's broker transport: kombu's Redis transport with one repair, so that a worker
survives a Redis restart (settings: CELERY_BROKER_TRANSPORT).

When the broker connection drops, the worker's consumer closes its channel, and closing
hands the messages it holds unacknowledged (a task running with acks_late, a countdown
task waiting in the worker) back to their queues. In kombu 5.7 that hand-back reads the
connection's client after the connection has already let go of it: an AttributeError that
escapes Celery's handling of connection errors and ends the worker ("Unrecoverable
error"), so one Redis restart stops every host's worker. Here the hand-back is skipped
instead: the messages stay in Redis's unacked set (kept across the restart by the
append-only file) and come back after the visibility timeout, and the work they carried
is sent again long before by the resend-lost-work sweep (docs/architecture.md, "Restarts")."""

from __future__ import annotations

import logging

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client=None):
        try:
            return super().restore_unacked(client)
        except AttributeError:
            log.warning(
                "broker connection lost: %d unacknowledged message(s) stay in Redis until "
                "the visibility timeout; lost work is sent again by the resend-lost-work sweep",
                len(self._delivered),
            )
            return None


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
