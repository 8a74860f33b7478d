"""Starts the terminal relay inside the KVM host's terminals pool (see relay.py and
core/queues.py): the process that runs the terminal operations, so an operation that opens a
session pokes the relay of its own process. The pool is a long-running process per host,
restarted by whoever runs it, so the relay lives and dies with it. tmux itself is a separate
server: sessions survive a worker restart and the new relay attaches to them again."""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutdown

from core.conf import vsb
from core.queues import Work, served_work

from . import hostside, relay

log = logging.getLogger(__name__)


@worker_ready.connect
def start_relay(sender=None, **_kwargs) -> None:
    host_name = vsb("HOST_NAME")
    if Work.TERMINALS not in served_work(sender, host_name):
        return  # only the terminals pool reaches the host's tmux
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
