"""Start-up and liveness of a host's worker pools (core/queues.py): each pool, when it
starts, picks up the work of its own queues that the previous process of that pool left
unfinished (it was killed, or the machine rebooted), and nothing else: a restart of the
commands pool fails the commands that were running, a restart of the lifecycle pool resumes
the lifecycle operations, and neither touches the other's work. The lifecycle pool also
registers the Host row, reports the domain type found by the KVM probe, reconciles the host
(libvirt may have changed while no worker watched it) and then beats every
VSB_HEARTBEAT_SECONDS with the host's memory, CPUs, free disk and its guests' use (`measure`),
which placement reads (sandboxes/capacity.py)."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from django.db import close_old_connections, connection

from core.conf import vsb
from core.queues import Work, served_work

from . import capacity, services
from .drivers.base import DriverError, HypervisorDriver
from .models import Host
from .runtime import get_driver
from .tasks import TASK_FOR_KIND, work_for_kind

log = logging.getLogger(__name__)
_stop = threading.Event()


def measure(host: Host, driver: HypervisorDriver, sandbox_dir: str) -> dict:
    """What this host has and what its guests use, for its heartbeat (`Host.resources`, the
    shape in sandboxes/capacity.py): /proc/meminfo, the CPU count, the free disk of
    `sandbox_dir` and one libvirt call for the domains. A part that cannot be read is left
    out (and logged): the beat itself still says the worker is alive."""
    try:
        figures: dict = capacity.host_figures(sandbox_dir)
    except (OSError, ValueError):
        log.warning("heartbeat: could not read this host's memory or disk", exc_info=True)
        figures = {}
    try:
        names = services.host_sandbox_names(host)
        figures["guests"] = capacity.guest_figures(driver.domain_stats(), names)
    except DriverError:
        log.warning("heartbeat: could not read the domains' stats", exc_info=True)
    return figures


def beat(host: Host, domain_type: str = "", boot_slots: int = 0) -> None:
    """One heartbeat of the host's lifecycle pool, with its measured figures and boot slots."""
    resources = measure(host, get_driver(host.libvirt_uri), vsb("SANDBOX_DIR"))
    services.record_heartbeat(host, domain_type, resources, boot_slots)


def _heartbeat_loop(host_id: int, domain_type: str) -> None:
    slots = services.boot_slots_for(domain_type, services.host_cores())
    while not _stop.wait(vsb("HEARTBEAT_SECONDS")):
        try:
            close_old_connections()
            beat(Host.objects.get(pk=host_id), domain_type, slots)
        except Exception:  # noqa: BLE001 - a missed beat must not kill the thread
            log.exception("heartbeat failed")
        finally:
            connection.close()


def recover(host: Host, works: set[Work] | frozenset[Work] = frozenset(Work)) -> int:
    """Pick up what the previous process serving `works` on this host left open: re-enqueue
    its operations (the tasks are idempotent, so one that had in fact finished its step just
    checks and moves on) and, for the commands pool, fail the commands that were running."""
    kinds = [kind for kind in TASK_FOR_KIND if work_for_kind(kind) in works]
    ops, failed_commands = services.orphaned_work(
        host, kinds=kinds, commands=Work.COMMANDS in works
    )
    for op in ops:
        services.report_progress(op.pk, op.progress, "resumed after a worker restart")
        services.enqueue(TASK_FOR_KIND[op.kind], host, str(op.pk))
    if ops or failed_commands:
        log.warning(
            "host %s (%s): resumed %d operation(s), marked %d interrupted command(s) failed",
            host.name,
            ", ".join(sorted(works)),
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


def reconcile_at_start(host: Host) -> None:
    """One reconcile pass (sandboxes/reconcile.py) before the lifecycle pool takes work: the
    host may have changed while no worker watched it (a reboot shut its guests off, an
    operator ran virsh), and its rows match libvirt again now, not a beat later. Operations
    `recover` resumed are left to their tasks. A failure is logged: the beat's pass retries."""
    from . import reconcile

    try:
        reconcile.reconcile_host(host)
    except Exception:  # noqa: BLE001 - the worker must start anyway
        log.exception("reconcile of host %s at the worker's start failed", host.name)


@worker_ready.connect
def on_worker_ready(sender=None, **_kwargs) -> None:
    host_name = vsb("HOST_NAME")
    works = served_work(sender, host_name) & {Work.LIFECYCLE, Work.COMMANDS}
    if not works:
        return  # a control-only or terminals-only worker: no operations to look after
    host = services.ensure_host(host_name)
    log.info("worker for host %s serving %s", host.name, ", ".join(sorted(works)))
    if Work.LIFECYCLE in works:
        services.record_host_setup(
            host, sandbox_dir=vsb("SANDBOX_DIR"), port_range=vsb("PORT_RANGE")
        )
        domain_type = _domain_type(get_driver(host.libvirt_uri))
        slots = services.boot_slots_for(domain_type, services.host_cores())
        log.info(
            "host %s: domain type %s, boots %d guest(s) at once",
            host.name,
            domain_type or "?",
            slots,
        )
    recover(host, works)
    if Work.LIFECYCLE in works:
        reconcile_at_start(host)
        # The first beat after the reconcile: a host is offered for new sandboxes once its
        # rows match libvirt.
        beat(host, domain_type, slots)
        services.admit_boots(host)  # what the previous process had no time to admit
    connection.close()
    if Work.LIFECYCLE in works:
        _stop.clear()
        threading.Thread(
            target=_heartbeat_loop, args=(host.pk, domain_type), name="vsb-heartbeat", daemon=True
        ).start()


@worker_shutdown.connect
def on_worker_shutdown(**_kwargs) -> None:
    _stop.set()
