"""The hypervisor driver interface.

Drivers know nothing of Django: everything they need arrives through constructors and
arguments, and everything that goes wrong leaves as a typed error (a `core.errors.Error`)
that says whether trying again may help (transient) or a person has to act (permanent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from core.errors import Error


class DriverError(Error):
    """Base of every driver error. `transient` tells the caller whether a retry may help."""

    code = "driver_error"


class TransientDriverError(DriverError):
    """The hypervisor is busy or unreachable right now; retry with backoff."""

    transient = True


class PermanentDriverError(DriverError):
    """Retrying will not help; the message says what a person has to fix."""


class DomainNotFound(PermanentDriverError):
    """No domain of that name exists on this host."""

    code = "domain_not_found"


class SourceNotUsable(PermanentDriverError):
    """The source VM cannot be cloned as asked (running, no disk, missing file...)."""

    code = "source_not_usable"


# Domain states as plain strings, so callers need not import libvirt.
RUNNING = "running"
SHUTOFF = "shutoff"
PAUSED = "paused"
CRASHED = "crashed"
OTHER = "other"


@dataclass(frozen=True)
class PortForward:
    """QEMU user networking with a host forward: the guest's port 22 is reachable only at
    bind_address:host_port on the KVM host. The guest can reach nothing (restrict=on)."""

    host_port: int
    bind_address: str = "127.0.0.1"
    guest_port: int = 22
    # The one exception to restrict=on: a guest connection to egress_to (address, port inside
    # QEMU's user network, never a real one) runs this command (argv) with the connection as
    # its stdin/stdout: the egress relay (both set by the egress app).
    egress_relay: tuple[str, ...] | None = None
    egress_to: tuple[str, int] | None = None


@dataclass(frozen=True)
class LibvirtNetwork:
    """A NIC on a libvirt network (e.g. `default` NAT) or a host bridge; the guest IP is
    found by DHCP lease, guest agent or ARP."""

    name: str = "default"
    kind: str = "network"  # "network" or "bridge"


@dataclass(frozen=True)
class CloneSpec:
    """Everything needed to define a sandbox domain as a linked clone of a source disk."""

    name: str  # domain name, e.g. "sbx-1a2b3c4d"
    source_disk: str  # absolute path of the (read-only) backing image
    workdir: str  # directory owned by this sandbox: overlay, console log
    vcpus: int = 1
    memory_mb: int = 256
    source_format: str = "qcow2"
    kernel: str | None = None  # direct kernel boot when set
    initrd: str | None = None
    cmdline: str | None = None
    network: PortForward | LibvirtNetwork = field(default_factory=LibvirtNetwork)
    mac: str | None = None  # random 52:54:00:xx:xx:xx when None
    # Written into the domain's <metadata>; lets a retried task recognise its own domain.
    tags: dict[str, str] = field(default_factory=dict)
    # Fork: start the overlay from this (overlay path, snapshot name) instead of the bare
    # source disk. The new overlay still has source_disk as its backing file.
    from_snapshot: tuple[str, str] | None = None


class SnapshotNotFound(PermanentDriverError):
    """No snapshot of that name exists for the domain."""

    code = "snapshot_not_found"


@dataclass(frozen=True)
class SnapshotInfo:
    """An internal snapshot of a sandbox's disk (and memory, when taken while running)."""

    name: str
    created_at: float  # epoch seconds
    state: str  # domain state when taken: RUNNING (memory included) or SHUTOFF
    has_memory: bool
    description: str = ""


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: str  # one of RUNNING, SHUTOFF, PAUSED, CRASHED, OTHER
    persistent: bool = True
    disks: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    # A shut-off domain whose memory libvirt saved (managed save: a hibernated sandbox);
    # start() restores it from there instead of booting.
    managed_save: bool = False


@dataclass(frozen=True)
class DomainStats:
    """One domain's use of its host, from libvirt's domain stats (the heartbeat's figures)."""

    name: str
    running: bool  # running or paused: a QEMU process exists
    memory_kib: int  # configured (maximum) memory
    rss_kib: int  # resident memory of its QEMU process; 0 when not running


class HypervisorDriver(Protocol):
    """What the service layer needs from a hypervisor. Every method is safe to call twice."""

    def list_domains(self) -> list[DomainInfo]: ...

    def get_domain(self, name: str) -> DomainInfo | None: ...

    def domain_stats(self) -> list[DomainStats]:
        """Every domain's state, memory and QEMU resident memory, in one call."""
        ...

    def source_disk(self, domain_name: str) -> str:
        """Path of the first disk of a (shut off) golden domain; SourceNotUsable if running."""
        ...

    def clone(self, spec: CloneSpec) -> DomainInfo:
        """Create the qcow2 overlay in spec.workdir and define the domain. If a domain with
        spec.name already exists carrying the same tags, return it unchanged."""
        ...

    def start(self, name: str) -> None:
        """Boot a shut-off domain, or restore it from its managed save image when it has
        one (a hibernated sandbox), or resume it when paused. No-op when running."""
        ...

    def suspend(self, name: str) -> None:
        """Pause the vCPUs (memory stays in the host's RAM). No-op when already paused;
        PermanentDriverError when the domain is not running."""
        ...

    def resume(self, name: str) -> None:
        """Resume a paused domain. No-op when running; PermanentDriverError when shut off."""
        ...

    def managed_save(self, name: str) -> None:
        """Save the memory to libvirt's managed save image and stop QEMU (hibernate); the
        next start() restores from it. No-op when already saved (shut off with an image)."""
        ...

    def managed_save_remove(self, name: str) -> None:
        """Drop the managed save image (the next start boots afresh); none is success."""
        ...

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        """ACPI shutdown, then force off after `timeout` seconds. No-op when already off."""
        ...

    def destroy(self, name: str, workdir: str | None = None) -> None:
        """Force off, undefine (with snapshot metadata and the managed save image) and
        remove only files inside `workdir`. A missing domain is success."""
        ...

    def state(self, name: str) -> str: ...

    def interface_addresses(self, name: str, source: str) -> list[str]:
        """IPv4 addresses of the guest from `source` in ("lease", "agent", "arp")."""
        ...

    def guest_ping(self, name: str) -> bool:
        """True when the qemu-guest-agent answers."""
        ...

    def set_guest_time(self, name: str) -> None:
        """Set the guest clock to the host's now through the guest agent."""
        ...

    def snapshot_create(self, name: str, snapshot: str, description: str = "") -> SnapshotInfo:
        """Internal snapshot: disk and memory when running, disk when shut off. An existing
        snapshot of that name is returned unchanged (a retried task)."""
        ...

    def snapshot_revert(self, name: str, snapshot: str) -> str:
        """Return the domain to the snapshot; returns the resulting domain state."""
        ...

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        """Delete the snapshot; a missing one is success."""
        ...

    def snapshot_list(self, name: str) -> list[SnapshotInfo]: ...
