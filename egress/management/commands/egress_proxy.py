"""`manage.py egress_proxy`: the egress proxy of this KVM host (one per host, next to its
worker; scripts/run.sh starts it). Guests reach it through the relay QEMU spawns per
connection (docs/egress.md)."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import signal

from django.core.management.base import BaseCommand

from core.conf import vsb
from egress import services
from egress.addresses import AddressGuard
from egress.proxy import Limits, serve

log = logging.getLogger("egress.proxy")

# The group QEMU runs as on Debian: the relay it spawns must be able to connect.
QEMU_GROUP = "libvirt-qemu"


class Command(BaseCommand):
    help = "Run this KVM host's egress proxy (until SIGTERM or SIGINT)."

    def add_arguments(self, parser):
        parser.add_argument("--host-name", default=None, help="default: VSB_HOST_NAME")

    def handle(self, *args, host_name=None, **options):
        host_name = host_name or vsb("HOST_NAME")
        services.install_relay()
        path = services.socket_path(host_name)
        asyncio.run(self._serve(str(path)))

    async def _serve(self, path: str) -> None:
        limits = Limits(
            per_sandbox=vsb("EGRESS_MAX_CONNECTIONS_PER_SANDBOX"),
            total=vsb("EGRESS_MAX_CONNECTIONS"),
        )
        guard = AddressGuard(exempt=services.exemptions())
        server = await serve(path, services, services.record_connection, guard, limits=limits)
        _let_qemu_connect(path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.stdout.write(f"egress proxy listening on {path}", ending="\n")
        self.stdout.flush()
        async with server:
            await stop.wait()
        log.info("egress proxy stopped")


def _let_qemu_connect(path: str) -> None:
    """The socket is 0660: its group becomes QEMU's, so only root and QEMU's relays connect."""
    try:
        os.chown(path, -1, grp.getgrnam(QEMU_GROUP).gr_gid, follow_symlinks=False)
    except KeyError:
        log.warning("no %s group: the relay may not reach %s", QEMU_GROUP, path)
