"""Start-up and liveness of a host's worker: register the Host row, report the domain type
found by the KVM probe, beat every few seconds, and pick up the work the previous worker
process of this host left unfinished (it was killed, or the machine rebooted)."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from django.db import close_old_connections, connection

from core.conf import vsb

from . import services
from .models import Host
from .runtime import get_driver
from .tasks import TASK_FOR_KIND

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 15
_stop = threading.Event()


def _consumed_queues(sender) -> set[str]:
    try:
        return {q.name for q in sender.app.amqp.queues.consume_from.values()}
    except Exception:  # noqa: BLE001
        return set()


def _heartbeat_loop(host_id: int, domain_type: str) -> None:
    while not _stop.wait(HEARTBEAT_SECONDS):
        try:
            close_old_connections()
            host = Host.objects.get(pk=host_id)
            services.record_heartbeat(host, domain_type)
        except Exception:  # noqa: BLE001 - a missed beat must not kill the thread
            log.exception("heartbeat failed")
        finally:
            connection.close()


def recover(host: Host) -> int:
    """Re-enqueue every operation this host's previous worker left open. The tasks are
    idempotent, so one that had in fact finished its step just checks and moves on."""
    ops, failed_commands = services.orphaned_work(host)
    for op in ops:
        services.report_progress(op.pk, op.progress, "resumed after a worker restart")
        services.enqueue(TASK_FOR_KIND[op.kind], host, str(op.pk))
    if ops or failed_commands:
        log.warning(
            "host %s: resumed %d operation(s), marked %d interrupted command(s) failed",
            host.name,
            len(ops),
            failed_commands,
        )
    return len(ops)


def _domain_type(driver) -> str:
    """kvm or qemu (TCG); says once, loudly, why it fell back to TCG."""
    verdict = getattr(driver, "domain_type_verdict", None)
    if verdict is None:
        return getattr(driver, "domain_type", "") or ""
    if verdict.domain_type == "qemu":
        log.warning("guests run under TCG (software emulation): %s", verdict.reason)
    return verdict.domain_type


@worker_ready.connect
def on_worker_ready(sender=None, **_kwargs) -> None:
    host_name = vsb("HOST_NAME")
    queue = Host.queue_for(host_name)
    if queue not in _consumed_queues(sender):
        return  # a control-only worker: no host to look after
    host = services.ensure_host(host_name)
    domain_type = _domain_type(get_driver(host.libvirt_uri))
    services.record_heartbeat(host, domain_type)
    log.info(
        "worker for host %s consuming %s (domain type %s)", host.name, queue, domain_type or "?"
    )
    recover(host)
    connection.close()
    _stop.clear()
    threading.Thread(
        target=_heartbeat_loop, args=(host.pk, domain_type), name="vsb-heartbeat", daemon=True
    ).start()


@worker_shutdown.connect
def on_worker_shutdown(**_kwargs) -> None:
    _stop.set()
