"""Builds the driver-layer objects (hypervisor driver, SSH certificate authority, SSH
connection pool) from Django settings, once per process. The drivers themselves never read
settings: this module is the only bridge."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

from django.db import connection

from core.conf import vsb

from .drivers.base import HypervisorDriver

log = logging.getLogger(__name__)
_lock = threading.Lock()
_drivers: dict[str, HypervisorDriver] = {}


def get_driver(libvirt_uri: str | None = None) -> HypervisorDriver:
    """The driver for a host's libvirt URI (one instance per URI and process)."""
    uri = libvirt_uri or vsb("LIBVIRT_URI")
    kind = vsb("DRIVER")
    key = f"{kind}:{uri}"
    with _lock:
        driver = _drivers.get(key)
        if driver is None:
            if kind == "fake":
                from .drivers.fake import FakeDriver

                driver = FakeDriver()
            else:
                from .drivers.libvirt_driver import LibvirtDriver

                driver = LibvirtDriver(
                    uri,
                    domain_type=vsb("DOMAIN_TYPE"),
                    probe_cache=vsb("KVM_PROBE_CACHE"),
                    # destroy() refuses to delete anything outside the sandboxes' directory.
                    workdir_root=vsb("SANDBOX_DIR"),
                )
            _drivers[key] = driver
        return driver


def deployment_name() -> str:
    """This installation's name in its domains' metadata (with the host name): VSB_DEPLOYMENT,
    else the name of the database that holds the rows. A domain is ours exactly when its row
    would be in this database, so the test suite and a dev server sharing a libvirtd (or two
    installs) never take each other's domains for strays."""
    return vsb("DEPLOYMENT") or str(connection.settings_dict["NAME"])


def reset_drivers() -> None:
    """Forget cached drivers (tests switch settings between cases)."""
    with _lock:
        _drivers.clear()


@lru_cache(maxsize=1)
def get_ca():
    from .remote.ca import CertificateAuthority

    ca = CertificateAuthority(vsb("SSH_CA_KEY"))
    ca.ensure()
    return ca


@lru_cache(maxsize=1)
def get_ssh_pool():
    from .remote.ssh import ConnectionPool

    return ConnectionPool()


def get_guest_reader():
    """The reader of guest disks, configured from settings (drivers/guest_reader.py)."""
    from .drivers.guest_reader import GuestReader, ReaderConfig

    return GuestReader(
        ReaderConfig(
            python=vsb("GUEST_READER_PYTHON"),
            uid_base=vsb("GUEST_READER_UID_BASE"),
            timeout=vsb("GUEST_READ_TIMEOUT_SECONDS"),
            output_limit=vsb("GUEST_READ_OUTPUT_LIMIT"),
        )
    )
