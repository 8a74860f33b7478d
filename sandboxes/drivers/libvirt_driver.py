"""HypervisorDriver on libvirt: linked-clone sandboxes on qemu:///system (or test:/// in tests)."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import libvirt

from .base import (
    CRASHED,
    OTHER,
    PAUSED,
    RUNNING,
    SHUTOFF,
    CloneSpec,
    DomainInfo,
    DomainNotFound,
    DomainStats,
    DriverError,
    PermanentDriverError,
    SnapshotInfo,
    SnapshotNotFound,
    SourceNotUsable,
    TransientDriverError,
)
from .domain_xml import build_domain_xml, disk_sources, first_disk, overlay_path, parse_tags
from .kvm_probe import KvmProbe, KvmVerdict, resolve_domain_type
from .qemu_img import convert_command, overlay_command, run_qemu_img

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: RUNNING,
    # "being shut down": QEMU still runs, and a caller must not treat the disk as free.
    libvirt.VIR_DOMAIN_SHUTDOWN: RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: CRASHED,
}
# The states in which a domain's QEMU process exists and holds memory.
_HAS_PROCESS = frozenset(state for state, word in _STATES.items() if word in (RUNNING, PAUSED)) | {
    libvirt.VIR_DOMAIN_PMSUSPENDED
}

_ADDRESS_SOURCES = {
    "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    "arp": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
}

_CONNECTION_ERRORS = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
}
_TRANSIENT_ERRORS = _CONNECTION_ERRORS | {
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
    libvirt.VIR_ERR_RESOURCE_BUSY,
}
# Flags an older or simpler driver (test:///) rejects: retry the call with fewer flags.
_FLAG_ERRORS = {
    libvirt.VIR_ERR_INVALID_ARG,
    libvirt.VIR_ERR_NO_SUPPORT,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
}
_NOT_RUNNING_ERRORS = {libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_INTERNAL_ERROR}

_UNDEFINE_FLAG_SETS = (
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
    0,
)

_silenced = False


def _silence_libvirt_stderr() -> None:
    # libvirt prints every error to stderr by default; we raise typed errors instead.
    global _silenced
    if not _silenced:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _silenced = True


class LibvirtDriver:
    """One lazily opened libvirt connection per instance, shared by threads (libvirt's
    connection object is thread-safe; the lock only guards opening and replacing it)."""

    def __init__(
        self,
        uri: str,
        domain_type: str = "auto",
        qemu_img: str = "qemu-img",
        probe_cache: str | None = None,
        *,
        qemu_binary: str = "qemu-system-x86_64",
        probe_kernel: str | None = None,
        workdir_root: str | None = None,
        agent_timeout: int = 5,
        set_time_retry: float = 1.5,
    ) -> None:
        """`probe_kernel`: a guest kernel the KVM probe also boots (see kvm_probe).
        `workdir_root`: when set, destroy() refuses to delete a workdir outside it."""
        if domain_type not in ("auto", "kvm", "qemu"):
            raise ValueError(f"domain_type must be auto, kvm or qemu, not {domain_type!r}")
        self.uri = uri
        self.domain_type_setting = domain_type
        self.qemu_img = qemu_img
        # Built now, run (and cached) only when the domain type is "auto" and first asked for.
        self._probe = KvmProbe(probe_cache, qemu_binary=qemu_binary, kernel=probe_kernel)
        self.workdir_root = os.path.realpath(workdir_root) if workdir_root else None
        self.agent_timeout = agent_timeout
        self.set_time_retry = set_time_retry
        self._lock = threading.RLock()
        self._conn: libvirt.virConnect | None = None
        self._verdict: KvmVerdict | None = None
        self._name_locks: dict[str, threading.Lock] = {}

    # ---- connection and error mapping ---------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive() == 1:
                        return conn
                except libvirt.libvirtError:
                    pass
                self._drop(conn)
            _silence_libvirt_stderr()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                code = exc.get_error_code()
                msg = f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}"
                if code in (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_ACCESS_DENIED):
                    raise PermanentDriverError(
                        msg + " (check the worker's libvirt permissions)"
                    ) from exc
                raise TransientDriverError(msg + " (is libvirtd running?)") from exc
            return self._conn

    def _drop(self, conn: libvirt.virConnect) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _call(self, what: str, fn: Callable[[libvirt.virConnect], T], name: str | None = None) -> T:
        """Run fn on the connection; one silent reconnect when the connection died under us."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _CONNECTION_ERRORS:
                    self._drop(conn)
                    if attempt == 1:
                        continue
                raise self._error(exc, what, name) from exc
        raise AssertionError("unreachable")

    def _error(self, exc: libvirt.libvirtError, what: str, name: str | None) -> DriverError:
        code = exc.get_error_code()
        message = exc.get_error_message() or str(exc)
        subject = f"{what} of domain {name!r}" if name else what
        text = f"{subject} on {self.uri}: {message}"
        lowered = message.lower()
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return DomainNotFound(f"{subject}: no domain named {name!r} on {self.uri}")
        if "state change lock" in lowered or "resource temporarily unavailable" in lowered:
            return TransientDriverError(text + " (another libvirt job holds the domain; retry)")
        if code in _TRANSIENT_ERRORS:
            return TransientDriverError(text)
        if "permission denied" in lowered:
            return PermanentDriverError(
                text + " (every directory above the sandbox's files must be traversable, mode"
                " 0755, by the user libvirt runs QEMU as)"
            )
        if code in (libvirt.VIR_ERR_ACCESS_DENIED, libvirt.VIR_ERR_AUTH_FAILED):
            return PermanentDriverError(text + " (check the worker's libvirt permissions)")
        if code == libvirt.VIR_ERR_SYSTEM_ERROR and "no such file" not in lowered:
            # errno-style failures (EBUSY killing QEMU, EAGAIN, broken pipes) usually pass.
            return TransientDriverError(text)
        return PermanentDriverError(text)

    def _lookup(self, conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
        return conn.lookupByName(name)

    # ---- domain type --------------------------------------------------------------------

    @property
    def domain_type_verdict(self) -> KvmVerdict:
        """The domain type clones get and why; probes (cached) on first use when "auto".
        The service logs `reason` once when `fell_back` is true."""
        with self._lock:
            if self._verdict is None:
                self._verdict = self._resolve_domain_type()
            return self._verdict

    def _resolve_domain_type(self) -> KvmVerdict:
        if self.domain_type_setting != "auto":
            return resolve_domain_type(self.domain_type_setting)
        parts = urlsplit(self.uri)
        if parts.scheme != "qemu" or parts.netloc:
            # The probe can only look at this machine's /dev/kvm and QEMU.
            return KvmVerdict(
                "qemu",
                f"cannot probe KVM behind {self.uri}; set the domain type explicitly to use KVM",
            )
        return resolve_domain_type("auto", self._probe)

    # ---- queries ------------------------------------------------------------------------

    def _info(self, dom: libvirt.virDomain) -> DomainInfo:
        xml = dom.XMLDesc(0)
        return DomainInfo(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=_STATES.get(dom.state()[0], OTHER),
            persistent=bool(dom.isPersistent()),
            disks=disk_sources(xml),
            tags=parse_tags(xml),
            managed_save=_has_managed_save(dom),
        )

    def list_domains(self) -> list[DomainInfo]:
        def run(conn: libvirt.virConnect) -> list[DomainInfo]:
            infos = []
            for dom in conn.listAllDomains(0):
                try:
                    infos.append(self._info(dom))
                except libvirt.libvirtError as exc:
                    # Undefined between the listing and our look at it: no longer exists.
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
            return infos

        return self._call("listing domains", run)

    def domain_stats(self) -> list[DomainStats]:
        """Every domain's state, configured memory and its QEMU process's resident memory:
        one libvirt call (`virConnectGetAllDomainStats`), no guest is asked anything."""

        def run(conn: libvirt.virConnect) -> list[DomainStats]:
            records = conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON, 0
            )
            return [
                DomainStats(
                    name=dom.name(),
                    running=stats.get("state.state") in _HAS_PROCESS,
                    memory_kib=int(stats.get("balloon.maximum", 0)),
                    rss_kib=int(stats.get("balloon.rss", 0)),
                )
                for dom, stats in records
            ]

        return self._call("reading domain stats", run)

    def get_domain(self, name: str) -> DomainInfo | None:
        try:
            return self._call("lookup", lambda c: self._info(self._lookup(c, name)), name)
        except DomainNotFound:
            return None

    def state(self, name: str) -> str:
        return self._call(
            "state", lambda c: _STATES.get(self._lookup(c, name).state()[0], OTHER), name
        )

    def source_disk(self, domain_name: str) -> str:
        def run(conn: libvirt.virConnect) -> tuple[str, tuple]:
            dom = self._lookup(conn, domain_name)
            state = _STATES.get(dom.state()[0], OTHER)
            return state, first_disk(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

        state, (disk_type, path, _fmt) = self._call("reading the source disk", run, domain_name)
        if path is None:
            raise SourceNotUsable(f"golden domain {domain_name!r} has no disk to clone")
        if state != SHUTOFF:
            raise SourceNotUsable(
                f"golden domain {domain_name!r} is {state}: its live disk {path} must not back "
                f"clones. Shut it down (virsh shutdown {domain_name}) or register a flattened "
                f"copy (qemu-img convert -O qcow2 {path} <copy>) as the source instead"
            )
        if disk_type not in ("file", "block"):
            raise SourceNotUsable(
                f"golden domain {domain_name!r}: disk {path} is a {disk_type} disk, not a local file"
            )
        if not os.path.exists(path):
            raise SourceNotUsable(f"golden domain {domain_name!r}: its disk {path} does not exist")
        return path

    # ---- clone --------------------------------------------------------------------------

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def clone(self, spec: CloneSpec) -> DomainInfo:
        if not os.path.isabs(spec.workdir):
            raise PermanentDriverError(
                f"{spec.name}: workdir {spec.workdir!r} must be an absolute path"
            )
        with self._name_lock(spec.name):
            existing = self.get_domain(spec.name)
            if existing is not None:
                return self._same_or_conflict(existing, spec)
            source = self._usable_source(spec)
            # Validation errors must surface before anything touches the disk.
            xml = build_domain_xml(spec, self.domain_type_verdict.domain_type)
            created_dir = not os.path.isdir(spec.workdir)
            os.makedirs(spec.workdir, mode=0o755, exist_ok=True)
            os.chmod(spec.workdir, 0o755)  # makedirs honours the umask; QEMU must traverse it
            overlay = overlay_path(spec)
            if os.path.lexists(overlay):
                # No domain of this name exists, so this is a leftover of an attempt that died
                # before define: a fresh overlay is the only safe state.
                os.unlink(overlay)
            try:
                if spec.from_snapshot:
                    self._fork_overlay(
                        source, spec.source_format, spec.from_snapshot, overlay, spec.name
                    )
                else:
                    self._create_overlay(source, spec.source_format, overlay, spec.name)
                dom = self._call("define", lambda c: c.defineXML(xml), spec.name)
            except Exception:
                twin = self._quiet_get(spec.name)
                if twin is not None and overlay in twin.disks:
                    # The define went through before the connection broke, or a concurrent
                    # worker won the race: the overlay is in use, keep it.
                    return self._same_or_conflict(twin, spec)
                self._undo_clone(overlay, spec.workdir, created_dir)
                raise
            except BaseException:
                self._undo_clone(overlay, spec.workdir, created_dir)
                raise
            return self._call("define", lambda c: self._info(dom), spec.name)

    @staticmethod
    def _undo_clone(overlay: str, workdir: str, created_dir: bool) -> None:
        _unlink_quietly(overlay)
        if created_dir:
            _rmdir_quietly(workdir)

    def _same_or_conflict(self, existing: DomainInfo, spec: CloneSpec) -> DomainInfo:
        if existing.tags == spec.tags:
            return existing
        raise PermanentDriverError(
            f"domain {spec.name!r} already exists on {self.uri} with tags {existing.tags}, "
            f"not {spec.tags}: the name belongs to something else; pick another name or "
            f"destroy that domain"
        )

    def _quiet_get(self, name: str) -> DomainInfo | None:
        try:
            return self.get_domain(name)
        except DriverError:
            return None

    def _usable_source(self, spec: CloneSpec) -> str:
        src = spec.source_disk
        if not os.path.isabs(src):
            raise SourceNotUsable(f"{spec.name}: source disk {src!r} must be an absolute path")
        real = os.path.realpath(src)
        if not os.path.exists(real):
            raise SourceNotUsable(f"{spec.name}: source disk {src} does not exist")
        if not os.path.isfile(real):
            raise SourceNotUsable(f"{spec.name}: source disk {src} is not a regular file")
        if not os.access(real, os.R_OK):
            raise SourceNotUsable(f"{spec.name}: source disk {src} is not readable by this worker")
        if _inside(real, os.path.realpath(spec.workdir)):
            raise SourceNotUsable(
                f"{spec.name}: source disk {src} lies inside the sandbox workdir {spec.workdir}, "
                f"which is deleted with the sandbox"
            )
        return real

    def _create_overlay(self, source: str, fmt: str, overlay: str, name: str) -> None:
        # The absolute real path goes into the overlay header: a relative or symlinked
        # backing path would break as soon as someone moves or relinks the images.
        cmd = overlay_command(source, overlay, backing_format=fmt, qemu_img=self.qemu_img)
        try:
            proc = run_qemu_img(cmd, timeout=120, what=f"{name}: qemu-img create {overlay}")
        except FileNotFoundError:
            raise PermanentDriverError(
                f"{name}: {self.qemu_img} not found; install qemu-utils"
            ) from None
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip()
            text = f"{name}: cannot create overlay {overlay} on {source} ({fmt}): {err}"
            if "lock" in err.lower():
                raise SourceNotUsable(text + " (is a running VM using the source disk?)")
            if source in err or "backing" in err.lower() or "format" in err.lower():
                raise SourceNotUsable(text)
            raise PermanentDriverError(text)

    def _fork_overlay(
        self, source: str, fmt: str, origin: tuple[str, str], overlay: str, name: str
    ) -> None:
        """A new overlay holding another overlay's snapshot, still backed by the source disk
        (the origin may be open in its running QEMU: see convert_command)."""
        origin_overlay, snapshot = origin
        cmd = convert_command(
            origin_overlay,
            overlay,
            snapshot=snapshot,
            backing=source,
            backing_format=fmt,
            qemu_img=self.qemu_img,
        )
        proc = run_qemu_img(cmd, timeout=600, what=f"{name}: copying snapshot {snapshot}")
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip()
            raise SourceNotUsable(
                f"{name}: cannot fork snapshot {snapshot!r} of {origin_overlay}: {err}"
            )

    # ---- snapshots ----------------------------------------------------------------------

    def snapshot_create(self, name: str, snapshot: str, description: str = "") -> SnapshotInfo:
        def run(conn: libvirt.virConnect) -> SnapshotInfo:
            dom = self._lookup(conn, name)
            existing = _find_snapshot(dom, snapshot)
            if existing is not None:
                return _snapshot_info(existing)
            if dom.isActive() == 1:
                _flush_guest(dom)
            root = ET.Element("domainsnapshot")
            ET.SubElement(root, "name").text = snapshot
            ET.SubElement(root, "description").text = description
            return _snapshot_info(dom.snapshotCreateXML(ET.tostring(root, encoding="unicode"), 0))

        return self._call("taking a snapshot", run, name)

    def snapshot_revert(self, name: str, snapshot: str) -> str:
        def run(conn: libvirt.virConnect) -> str:
            dom = self._lookup(conn, name)
            snap = _find_snapshot(dom, snapshot)
            if snap is None:
                raise SnapshotNotFound(f"domain {name!r} has no snapshot {snapshot!r}")
            dom.revertToSnapshot(snap, 0)
            return _STATES.get(dom.state()[0], OTHER)

        return self._call("reverting to a snapshot", run, name)

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            snap = _find_snapshot(self._lookup(conn, name), snapshot)
            if snap is not None:
                snap.delete(0)

        self._call("deleting a snapshot", run, name)

    def snapshot_list(self, name: str) -> list[SnapshotInfo]:
        def run(conn: libvirt.virConnect) -> list[SnapshotInfo]:
            # Topological: parents first, so equal creation seconds keep their real order.
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL
            snaps = [_snapshot_info(s) for s in self._lookup(conn, name).listAllSnapshots(flags)]
            return sorted(snaps, key=lambda s: s.created_at)

        return self._call("listing snapshots", run, name)

    # ---- power --------------------------------------------------------------------------

    def start(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, name)
            state = _STATES.get(dom.state()[0], OTHER)
            if state == RUNNING:
                return
            try:
                # A domain reads as paused for a moment while QEMU starts or saves a snapshot.
                dom.resume() if state == PAUSED else dom.create()
            except libvirt.libvirtError as exc:
                # Someone else started it between our state check and create().
                if "already running" in (exc.get_error_message() or "") or dom.isActive() == 1:
                    return
                raise

        self._call("start", run, name)

    def suspend(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, name)
            state = _STATES.get(dom.state()[0], OTHER)
            if state == PAUSED:
                return
            if state != RUNNING:
                raise PermanentDriverError(f"cannot pause domain {name!r}: it is {state}")
            dom.suspend()

        self._call("pause", run, name)

    def resume(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, name)
            state = _STATES.get(dom.state()[0], OTHER)
            if state == RUNNING:
                return
            if state != PAUSED:
                raise PermanentDriverError(f"cannot resume domain {name!r}: it is {state}")
            try:
                dom.resume()
            except libvirt.libvirtError:
                # Resumed by someone else between our look and our call.
                if _STATES.get(dom.state()[0], OTHER) == RUNNING:
                    return
                raise

        self._call("resume", run, name)

    def managed_save(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, name)
            if dom.isActive() != 1:
                if _has_managed_save(dom):
                    return
                raise PermanentDriverError(f"cannot hibernate domain {name!r}: it is not running")
            # A paused domain is saved too; RUNNING: start() restores it running, not paused.
            dom.managedSave(libvirt.VIR_DOMAIN_SAVE_RUNNING)

        self._call("hibernate (managed save)", run, name)

    def managed_save_remove(self, name: str) -> None:
        def run(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, name)
            if _has_managed_save(dom):
                dom.managedSaveRemove(0)

        self._call("removing the managed save image", run, name)

    def shutdown(self, name: str, timeout: float = 30.0) -> None:
        def ask(conn: libvirt.virConnect) -> libvirt.virDomain | None:
            dom = self._lookup(conn, name)
            state = _STATES.get(dom.state()[0], OTHER)
            if state == SHUTOFF:
                return None
            if state == RUNNING:
                try:
                    _with_flag_fallback(
                        dom.shutdownFlags, libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN, 0
                    )
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() not in _NOT_RUNNING_ERRORS or dom.isActive() == 1:
                        raise
                    return None
            # A paused or crashed guest cannot act on the power button: go straight to force-off.
            return dom

        dom = self._call("shutdown", ask, name)
        if dom is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._off(dom, name):
                return
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if self._off(dom, name):
            return
        logger.info("domain %s ignored ACPI shutdown for %.1f s, forcing it off", name, timeout)
        self._call("force off", lambda c: self._force_off(dom), name)

    def _off(self, dom: libvirt.virDomain, name: str) -> bool:
        try:
            return self._call("shutdown", lambda c: dom.isActive() != 1, name)
        except DomainNotFound:
            return True

    @staticmethod
    def _force_off(dom: libvirt.virDomain) -> None:
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in _NOT_RUNNING_ERRORS and dom.isActive() != 1:
                return
            raise

    def destroy(self, name: str, workdir: str | None = None) -> None:
        def run(conn: libvirt.virConnect) -> None:
            try:
                dom = self._lookup(conn, name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                raise
            try:
                if dom.isActive() == 1:
                    self._force_off(dom)
                if dom.isPersistent() == 1:
                    _with_flag_fallback(dom.undefineFlags, *_UNDEFINE_FLAG_SETS)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise

        self._call("destroy", run, name)
        if workdir:
            self._remove_workdir(workdir, name)

    def _remove_workdir(self, workdir: str, name: str) -> None:
        if not os.path.isabs(workdir):
            raise PermanentDriverError(f"{name}: refusing to delete relative workdir {workdir!r}")
        if not os.path.lexists(workdir):
            return
        if os.path.islink(workdir):
            raise PermanentDriverError(
                f"{name}: workdir {workdir} is a symlink; refusing to delete through it"
            )
        real = os.path.realpath(workdir)
        if real.count(os.sep) < 2:
            raise PermanentDriverError(
                f"{name}: refusing to delete top-level directory {real} as a workdir"
            )
        if self.workdir_root and not _inside(real, self.workdir_root):
            raise PermanentDriverError(
                f"{name}: workdir {real} is outside {self.workdir_root}; not deleting it"
            )
        kept = remove_tree_inside(real)
        if kept:
            logger.warning(
                "%s: kept %s: backing files of images in the workdir", name, ", ".join(kept)
            )

    # ---- guest agent --------------------------------------------------------------------

    def interface_addresses(self, name: str, source: str) -> list[str]:
        if source not in _ADDRESS_SOURCES:
            raise ValueError(
                f"address source must be one of {sorted(_ADDRESS_SOURCES)}, not {source!r}"
            )

        def run(conn: libvirt.virConnect) -> dict:
            dom = self._lookup(conn, name)
            try:
                return dom.interfaceAddresses(_ADDRESS_SOURCES[source], 0) or {}
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _CONNECTION_ERRORS | {libvirt.VIR_ERR_NO_DOMAIN}:
                    raise
                # Agent not up yet, guest not running, no lease, netlink trouble with ARP:
                # all mean "no address known yet", which callers poll for anyway.
                logger.debug("%s: no %s addresses yet: %s", name, source, exc.get_error_message())
                return {}

        interfaces = self._call("interface addresses", run, name)
        found: list[str] = []
        for iface in interfaces.values():
            for addr in iface.get("addrs") or []:
                if addr.get("type") != libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    continue
                ip = addr.get("addr")
                if ip and not ipaddress.ip_address(ip).is_loopback and ip not in found:
                    found.append(ip)
        return found

    def guest_ping(self, name: str) -> bool:
        import libvirt_qemu  # only the QEMU driver has it; keep import-time light

        def run(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, name)
            try:
                reply = libvirt_qemu.qemuAgentCommand(
                    dom, '{"execute":"guest-ping"}', self.agent_timeout, 0
                )
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in _CONNECTION_ERRORS | {libvirt.VIR_ERR_NO_DOMAIN}:
                    raise
                return False
            try:
                return "return" in json.loads(reply)
            except (TypeError, ValueError):
                return False

        try:
            return self._call("guest ping", run, name)
        except DomainNotFound:
            raise
        except DriverError:
            return False

    def set_guest_time(self, name: str) -> None:
        deadline = time.monotonic() + self.set_time_retry

        def run(conn: libvirt.virConnect) -> None:
            dom = self._lookup(conn, name)
            while True:
                now = time.time()
                try:
                    dom.setTime({"seconds": int(now), "nseconds": int((now % 1) * 1e9)}, 0)
                    return
                except libvirt.libvirtError as exc:
                    # Right after a revert the agent is "not connected" for a moment.
                    agent_down = exc.get_error_code() in (
                        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                        libvirt.VIR_ERR_AGENT_UNSYNCED,
                    )
                    if not agent_down or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.1)

        self._call("setting the guest clock", run, name)


def _has_managed_save(dom: libvirt.virDomain) -> bool:
    try:
        return dom.hasManagedSaveImage(0) == 1
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in _FLAG_ERRORS:
            return False  # a driver without managed save (test:///) has none
        raise


def _flush_guest(dom: libvirt.virDomain) -> None:
    """Make the guest write its page cache to disk (agent fsfreeze + immediate thaw), so the
    disk half of a snapshot has every file: a fork boots from the disk alone. Thawed before
    the snapshot, never around it: a memory snapshot of a frozen guest would restore frozen.
    Without an agent the snapshot is still consistent for restore (memory holds the rest)."""
    try:
        dom.fsFreeze(None, 0)
    except libvirt.libvirtError as exc:
        logger.info("no filesystem flush before snapshot of %s: %s", dom.name(), exc)
        return
    try:
        dom.fsThaw(None, 0)
    except libvirt.libvirtError:
        logger.exception("thawing %s after a flush failed; retrying once", dom.name())
        dom.fsThaw(None, 0)


def _find_snapshot(dom: libvirt.virDomain, snapshot: str) -> libvirt.virDomainSnapshot | None:
    try:
        return dom.snapshotLookupByName(snapshot, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            return None
        raise


def _snapshot_info(snap: libvirt.virDomainSnapshot) -> SnapshotInfo:
    root = ET.fromstring(snap.getXMLDesc(0))
    state = root.findtext("state") or ""
    memory = root.find("memory")
    has_memory = memory is not None and memory.get("snapshot") not in (None, "no")
    return SnapshotInfo(
        name=root.findtext("name") or snap.getName(),
        created_at=float(root.findtext("creationTime") or 0),
        state=RUNNING
        if state == "running"
        else SHUTOFF
        if state == "shutoff"
        else _state_word(state),
        has_memory=has_memory or state == "running",
        description=root.findtext("description") or "",
    )


def _state_word(state: str) -> str:
    return {"paused": PAUSED, "crashed": CRASHED}.get(state, OTHER)


def _with_flag_fallback(method: Callable[[int], object], *flag_sets: int) -> None:
    """Call method(flags) with the richest flag set the driver accepts."""
    for i, flags in enumerate(flag_sets):
        try:
            method(flags)
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in _FLAG_ERRORS:
                raise
            if i == len(flag_sets) - 1:
                raise


# ---- filesystem helpers (module level so tests can use them directly) ----------------------


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("cannot remove %s: %s", path, exc)


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def qcow2_backing_file(path: str) -> str | None:
    """The backing file named in a qcow2 header (absolute), None if none or not qcow2."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
            if len(header) < 20 or header[:4] != b"QFI\xfb":
                return None
            offset, size = struct.unpack(">QI", header[8:20])
            if offset == 0 or size == 0 or size > 4096:
                return None
            f.seek(offset)
            name = f.read(size).decode("utf-8", "replace")
    except OSError:
        return None
    if ":" in name.split("/", 1)[0]:
        return None  # a protocol (json:, nbd:...), not a local file
    return os.path.join(os.path.dirname(path), name) if not os.path.isabs(name) else name


def backing_chain(path: str, limit: int = 32) -> list[str]:
    """Real paths of every image below `path` in its qcow2 backing chain."""
    chain: list[str] = []
    current = path
    for _ in range(limit):
        backing = qcow2_backing_file(current)
        if backing is None:
            break
        real = os.path.realpath(backing)
        if real in chain:
            break
        chain.append(real)
        current = real
    return chain


def remove_tree_inside(root: str) -> list[str]:
    """Delete everything under the real directory `root` and root itself, never following a
    symlink and never deleting a file that some qcow2 in the tree uses as a backing file (a
    golden image someone put in the wrong place). Returns the paths it kept."""
    root = os.path.realpath(root)
    protected: set[str] = set()
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for fname in files:
            p = os.path.join(dirpath, fname)
            if not os.path.islink(p):
                protected.update(backing_chain(p))
    kept: list[str] = []
    for dirpath, dirs, files in os.walk(root, topdown=False, followlinks=False):
        if not _inside(os.path.realpath(dirpath), root):
            continue  # cannot happen without followlinks; guard anyway
        for fname in files:
            p = os.path.join(dirpath, fname)
            if not os.path.islink(p) and os.path.realpath(p) in protected:
                kept.append(p)
                continue
            _unlink_quietly(p)  # unlinks a symlink itself, never its target
        for dname in dirs:
            p = os.path.join(dirpath, dname)
            if os.path.islink(p):
                _unlink_quietly(p)
            else:
                _rmdir_quietly(p)
    _rmdir_quietly(root)
    return kept
