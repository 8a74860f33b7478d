"""An in-memory HypervisorDriver for fast service-layer tests.

It behaves like LibvirtDriver as far as callers can tell (tests/sandboxes/drivers/
test_driver_contract.py runs the same checks against both) but touches no files: clone()
records the overlay path it would have created. A source disk is usable when it exists on
disk or was registered with add_source_disk().
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace

from . import base
from .base import PAUSED, RUNNING, SHUTOFF, CloneSpec, DomainInfo, SnapshotInfo
from .domain_xml import build_domain_xml, overlay_path

FAKE_QEMU_OVERHEAD_KIB = 50 * 1024

_ADDRESS_SOURCES = ("lease", "agent", "arp")


@dataclass
class FakeDomain:
    info: DomainInfo
    spec: CloneSpec | None = None
    agent_up: bool = True  # answers guest-ping while running
    ignores_acpi: bool = False  # shutdown() then has to force it off
    addresses: dict[str, list[str]] = field(default_factory=dict)
    forced_off: int = 0
    time_set: int = 0
    snapshots: dict[str, SnapshotInfo] = field(default_factory=dict)


class FakeDriver:
    """Thread-safe; inspect `domains` and `calls` in assertions."""

    def __init__(self, domain_type: str = "qemu") -> None:
        self.domain_type = domain_type
        self.domains: dict[str, FakeDomain] = {}
        self.calls: list[tuple[str, tuple]] = []
        self.source_disks: set[str] = set()
        self._failures: dict[str, list[base.DriverError]] = defaultdict(list)
        self._lock = threading.RLock()

    # ---- test hooks ---------------------------------------------------------------------

    def fail_next(self, method: str, error: base.DriverError, times: int = 1) -> None:
        """Make the next `times` calls of `method` raise `error` before doing anything."""
        if not hasattr(self, method):
            raise AttributeError(f"FakeDriver has no method {method!r}")
        with self._lock:
            self._failures[method].extend([error] * times)

    def add_source_disk(self, path: str) -> None:
        with self._lock:
            self.source_disks.add(path)

    def add_domain(
        self,
        name: str,
        state: str = SHUTOFF,
        disks: tuple[str, ...] = (),
        tags: dict[str, str] | None = None,
    ) -> DomainInfo:
        """Put a pre-existing domain (a golden VM, a stray) on the fake host."""
        with self._lock:
            info = DomainInfo(
                name=name, uuid=str(uuid.uuid4()), state=state, disks=disks, tags=dict(tags or {})
            )
            self.domains[name] = FakeDomain(info=info)
            return info

    def set_state(self, name: str, state: str) -> None:
        """Simulate the guest changing state on its own (powered off inside, crashed...)."""
        with self._lock:
            dom = self._get(name)
            dom.info = replace(dom.info, state=state)

    def set_addresses(self, name: str, source: str, addresses: list[str]) -> None:
        with self._lock:
            self._get(name).addresses[source] = list(addresses)

    def set_agent(self, name: str, up: bool) -> None:
        with self._lock:
            self._get(name).agent_up = up

    def set_ignores_acpi(self, name: str, ignores: bool = True) -> None:
        with self._lock:
            self._get(name).ignores_acpi = ignores

    # ---- HypervisorDriver ---------------------------------------------------------------

    def _enter(self, method: str, *args: object) -> None:
        self.calls.append((method, args))
        queue = self._failures.get(method)
        if queue:
            raise queue.pop(0)

    def _get(self, name: str) -> FakeDomain:
        try:
            return self.domains[name]
        except KeyError:
            raise base.DomainNotFound(f"no domain named {name!r} on fake://") from None

    def list_domains(self) -> list[DomainInfo]:
        with self._lock:
            self._enter("list_domains")
            return [d.info for d in self.domains.values()]

    def domain_stats(self) -> list[base.DomainStats]:
        """Its QEMU "process" holds the guest's memory plus FAKE_QEMU_OVERHEAD_KIB."""
        with self._lock:
            self._enter("domain_stats")
            stats = []
            for dom in self.domains.values():
                running = dom.info.state in (RUNNING, PAUSED)
                memory_kib = dom.spec.memory_mb * 1024 if dom.spec else 0
                rss = memory_kib + FAKE_QEMU_OVERHEAD_KIB if running else 0
                stats.append(base.DomainStats(dom.info.name, running, memory_kib, rss))
            return stats

    def get_domain(self, name: str) -> DomainInfo | None:
        with self._lock:
            self._enter("get_domain", name)
            dom = self.domains.get(name)
            return dom.info if dom else None

    def state(self, name: str) -> str:
        with self._lock:
            self._enter("state", name)
            return self._get(name).info.state

    def source_disk(self, domain_name: str) -> str:
        with self._lock:
            self._enter("source_disk", domain_name)
            info = self._get(domain_name).info
            if not info.disks:
                raise base.SourceNotUsable(f"golden domain {domain_name!r} has no disk to clone")
            if info.state != SHUTOFF:
                raise base.SourceNotUsable(
                    f"golden domain {domain_name!r} is {info.state}: its live disk "
                    f"{info.disks[0]} must not back clones"
                )
            return info.disks[0]

    def clone(self, spec: CloneSpec) -> DomainInfo:
        with self._lock:
            self._enter("clone", spec)
            if not os.path.isabs(spec.workdir):
                raise base.PermanentDriverError(
                    f"{spec.name}: workdir {spec.workdir!r} must be an absolute path"
                )
            existing = self.domains.get(spec.name)
            if existing is not None:
                if existing.info.tags == spec.tags:
                    return existing.info
                raise base.PermanentDriverError(
                    f"domain {spec.name!r} already exists with tags {existing.info.tags}, not {spec.tags}"
                )
            src = spec.source_disk
            if src not in self.source_disks and not (os.path.isabs(src) and os.path.isfile(src)):
                raise base.SourceNotUsable(f"{spec.name}: source disk {src} does not exist")
            build_domain_xml(spec, self.domain_type)  # same validation (ValueError) as the real one
            info = DomainInfo(
                name=spec.name,
                uuid=str(uuid.uuid4()),
                state=SHUTOFF,
                disks=(overlay_path(spec),),
                tags=dict(spec.tags),
            )
            self.domains[spec.name] = FakeDomain(info=info, spec=spec)
            return info

    def start(self, name: str) -> None:
        with self._lock:
            self._enter("start", name)
            dom = self._get(name)
            if dom.info.state != RUNNING:
                # From a managed save image, when there is one: the image is used up.
                dom.info = replace(dom.info, state=RUNNING, managed_save=False)

    def suspend(self, name: str) -> None:
        with self._lock:
            self._enter("suspend", name)
            dom = self._get(name)
            if dom.info.state == PAUSED:
                return
            if dom.info.state != RUNNING:
                raise base.PermanentDriverError(
                    f"cannot pause domain {name!r}: it is {dom.info.state}"
                )
            dom.info = replace(dom.info, state=PAUSED)

    def resume(self, name: str) -> None:
        with self._lock:
            self._enter("resume", name)
            dom = self._get(name)
            if dom.info.state == RUNNING:
                return
            if dom.info.state != PAUSED:
                raise base.PermanentDriverError(
                    f"cannot resume domain {name!r}: it is {dom.info.state}"
                )
            dom.info = replace(dom.info, state=RUNNING)

    def managed_save(self, name: str) -> None:
        with self._lock:
            self._enter("managed_save", name)
            dom = self._get(name)
            if dom.info.state not in (RUNNING, PAUSED):
                if dom.info.managed_save:
                    return
                raise base.PermanentDriverError(
                    f"cannot hibernate domain {name!r}: it is not running"
                )
            dom.info = replace(dom.info, state=SHUTOFF, managed_save=True)

    def managed_save_remove(self, name: str) -> None:
        with self._lock:
            self._enter("managed_save_remove", name)
            dom = self._get(name)
            dom.info = replace(dom.info, managed_save=False)

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        with self._lock:
            self._enter("shutdown", name, timeout)
            dom = self._get(name)
            if dom.info.state == SHUTOFF:
                return
            if dom.ignores_acpi or dom.info.state != RUNNING:
                dom.forced_off += 1  # the real driver waits `timeout` first; the fake doesn't
            dom.info = replace(dom.info, state=SHUTOFF)

    def destroy(self, name: str, workdir: str | None = None) -> None:
        with self._lock:
            self._enter("destroy", name, workdir)
            self.domains.pop(name, None)

    def interface_addresses(self, name: str, source: str) -> list[str]:
        with self._lock:
            self._enter("interface_addresses", name, source)
            if source not in _ADDRESS_SOURCES:
                raise ValueError(
                    f"address source must be one of {sorted(_ADDRESS_SOURCES)}, not {source!r}"
                )
            dom = self._get(name)
            if dom.info.state != RUNNING or (source == "agent" and not dom.agent_up):
                return []
            return list(dom.addresses.get(source, []))

    def guest_ping(self, name: str) -> bool:
        with self._lock:
            self._enter("guest_ping", name)
            dom = self._get(name)
            return dom.info.state == RUNNING and dom.agent_up

    def set_guest_time(self, name: str) -> None:
        with self._lock:
            self._enter("set_guest_time", name)
            dom = self._get(name)
            if dom.info.state not in (RUNNING, PAUSED):
                raise base.PermanentDriverError(
                    f"setting the guest clock of domain {name!r}: domain is not running"
                )
            if not dom.agent_up:
                raise base.TransientDriverError(
                    f"setting the guest clock of domain {name!r}: guest agent is not connected"
                )
            dom.time_set += 1

    # ---- snapshots ----------------------------------------------------------------------

    def snapshot_create(self, name: str, snapshot: str, description: str = "") -> SnapshotInfo:
        import time

        with self._lock:
            self._enter("snapshot_create", name, snapshot)
            dom = self._get(name)
            if snapshot in dom.snapshots:
                return dom.snapshots[snapshot]
            info = SnapshotInfo(
                name=snapshot,
                created_at=time.time(),
                state=dom.info.state,
                has_memory=dom.info.state == RUNNING,
                description=description,
            )
            dom.snapshots[snapshot] = info
            return info

    def snapshot_revert(self, name: str, snapshot: str) -> str:
        with self._lock:
            self._enter("snapshot_revert", name, snapshot)
            dom = self._get(name)
            if snapshot not in dom.snapshots:
                raise base.SnapshotNotFound(f"domain {name!r} has no snapshot {snapshot!r}")
            dom.info = replace(dom.info, state=dom.snapshots[snapshot].state)
            return dom.info.state

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        with self._lock:
            self._enter("snapshot_delete", name, snapshot)
            self._get(name).snapshots.pop(snapshot, None)

    def snapshot_list(self, name: str) -> list[SnapshotInfo]:
        with self._lock:
            self._enter("snapshot_list", name)
            return sorted(self._get(name).snapshots.values(), key=lambda s: s.created_at)
