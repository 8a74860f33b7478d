"""A host's capacity by resources: what its worker reports in each heartbeat, which sandboxes
hold memory, whether a host has room for one more, and which host a new sandbox goes to.
Pure functions and small value types: the service layer (services.choose_host,
services.host_overviews) reads the rows and calls these; the worker (worker.py) gathers the
figures on the host itself.

The heartbeat's figures, stored in `Host.resources` (every key optional: a host whose worker
has not reported yet has `{}`):

    {
      "memory_total_mb": 24026,      # MemTotal of /proc/meminfo
      "memory_available_mb": 15870,  # MemAvailable
      "cpus": 2,                     # online CPUs
      "disk_total_mb": 102400,       # the filesystem of VSB_SANDBOX_DIR
      "disk_free_mb": 51200,
      "guests": {                    # this host's sandboxes' domains (drivers: domain_stats)
        "running": 12,               # domains running or paused
        "memory_mb": 3072,           # the sum of their configured memory
        "rss_mb": 3650               # the sum of their QEMU processes' resident memory
      }
    }

Committed memory is the sum of `memory_mb` of the host's sandboxes that hold memory
(`holds_memory`): a host accepts a sandbox while committed + its memory ≤ overcommit ratio ×
total memory (the host's own `memory_overcommit`, else VSB_MEMORY_OVERCOMMIT), and while the
count of those sandboxes is under `Host.capacity` when that is set."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .drivers.base import DomainStats

# The states in which a sandbox holds no host memory: no QEMU process (stopped, destroyed,
# error), or its memory written to disk (hibernated, once that state exists). Every other
# state holds it or will in a moment (requested, queued, provisioning, booting, ready,
# paused, restoring, stopping, destroying): a state added later counts unless named here.
MEMORY_FREE_STATES = frozenset({"stopped", "destroyed", "error", "hibernated"})


def holds_memory(state: str) -> bool:
    """Whether a sandbox in `state` counts against its host's memory (and count cap)."""
    return state not in MEMORY_FREE_STATES


# --- what the worker reports ------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """`memory_total_mb` and `memory_available_mb` from the text of /proc/meminfo (kB
    values); a kernel without MemAvailable (before 3.14) gets free + buffers + cached."""
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[name.strip()] = int(fields[0])
    if "MemTotal" not in kib:
        raise ValueError("no MemTotal line in /proc/meminfo")
    available = kib.get("MemAvailable")
    if available is None:
        available = sum(kib.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
    return {"memory_total_mb": kib["MemTotal"] // 1024, "memory_available_mb": available // 1024}


def disk_figures(path: str) -> dict[str, int]:
    """Total and free MiB of the filesystem that holds `path` (or its nearest existing
    parent: the sandbox directory is made with the first sandbox)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"disk_total_mb": usage.total // 2**20, "disk_free_mb": usage.free // 2**20}


def guest_figures(stats: Iterable[DomainStats], names: Iterable[str]) -> dict[str, int]:
    """The `guests` part of a report: the running domains among `names` (this host's
    sandboxes: a libvirtd may hold other hosts' or other installations' domains too)."""
    wanted = set(names)
    running = [s for s in stats if s.running and s.name in wanted]
    return {
        "running": len(running),
        "memory_mb": sum(s.memory_kib for s in running) // 1024,
        "rss_mb": sum(s.rss_kib for s in running) // 1024,
    }


def host_figures(sandbox_dir: str, meminfo: str = "/proc/meminfo") -> dict[str, int]:
    """This machine's memory, CPUs and the free disk of `sandbox_dir` (the worker's part of
    the report, without the guests)."""
    return {
        **parse_meminfo(Path(meminfo).read_text()),
        "cpus": os.cpu_count() or 1,
        **disk_figures(sandbox_dir),
    }


# --- room and placement ------------------------------------------------------------------


@dataclass(frozen=True)
class HostRoom:
    """One host's memory and count against its limits. `total_mb` is None until its worker
    reports; such a host is limited by its count cap only (and ranks after those that
    reported)."""

    name: str
    total_mb: int | None
    ratio: float
    committed_mb: int
    holding: int  # sandboxes that hold memory (the count cap counts these)
    cap: int | None  # Host.capacity: None, no count cap

    @property
    def limit_mb(self) -> int | None:
        return None if self.total_mb is None else int(self.ratio * self.total_mb)

    @property
    def free_mb(self) -> int | None:
        """What a new sandbox may still commit: limit − committed (negative when over)."""
        limit = self.limit_mb
        return None if limit is None else limit - self.committed_mb

    def refusal(self, memory_mb: int) -> str:
        """Why a sandbox of `memory_mb` does not fit, or "" when it does."""
        if self.cap is not None and self.holding >= self.cap:
            return f"{self.name} is full: {self.holding} of its {self.cap} sandboxes (count cap)"
        free = self.free_mb
        if free is not None and memory_mb > free:
            return (
                f"{self.name} is full: {self.committed_mb} MiB committed + {memory_mb} MiB "
                f"would pass its limit of {self.limit_mb} MiB ({self.ratio:g} × "
                f"{self.total_mb} MiB); {max(free, 0)} MiB free"
            )
        return ""

    def fits(self, memory_mb: int) -> bool:
        return not self.refusal(memory_mb)


def room_of(
    name: str,
    resources: Mapping,
    *,
    ratio: float,
    committed_mb: int,
    holding: int,
    cap: int | None,
) -> HostRoom:
    total = resources.get("memory_total_mb") if resources else None
    return HostRoom(
        name=name,
        total_mb=int(total) if isinstance(total, int | float) and total > 0 else None,
        ratio=float(ratio),
        committed_mb=committed_mb,
        holding=holding,
        cap=cap,
    )


def rank(rooms: Iterable[HostRoom], memory_mb: int) -> list[HostRoom]:
    """The hosts with room for `memory_mb`, best first: the most free memory, hosts that
    have not reported their memory last, ties by name."""
    fitting = [r for r in rooms if r.fits(memory_mb)]
    return sorted(fitting, key=lambda r: (r.free_mb is None, -(r.free_mb or 0), r.name))
