"""Starts the terminal relay inside the KVM host's worker (see relay.py): the worker is
already the one long-running process per host, restarted by whoever runs it, so the relay
lives and dies with it. tmux itself is a separate server: sessions survive a worker restart
and the new relay attaches to them again."""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutdown

from core.conf import vsb
from sandboxes.models import Host

from . import hostside, relay

log = logging.getLogger(__name__)


def _consumed_queues(sender) -> set[str]:
    try:
        return {q.name for q in sender.app.amqp.queues.consume_from.values()}
    except Exception:  # noqa: BLE001
        return set()


@worker_ready.connect
def start_relay(sender=None, **_kwargs) -> None:
    host_name = vsb("HOST_NAME")
    if Host.queue_for(host_name) not in _consumed_queues(sender):
        return  # a control-only worker has no tmux to relay
    from . import services

    relay.start(
        host_name,
        hostside.driver(),
        flush_ms=vsb("TERMINAL_FLUSH_MS"),
        reaper=services.reap_sessions,
    )


@worker_shutdown.connect
def stop_relay(**_kwargs) -> None:
    relay.stop()
