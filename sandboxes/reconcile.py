"""The periodic per-host reconcile: libvirt's domains against the sandbox rows.

Runs on the host's own worker (it needs that host's libvirt), one pass per beat
(`tasks.reconcile_hosts` on `control` enqueues `tasks.reconcile_host` for every live host).
A domain is *ours* only when its metadata names this host **and** this deployment
(`provisioning.domain_tags`): the test suite, a dev server and other installs may share the
libvirtd, and their domains are never touched. What it corrects (docs/architecture.md):

* a ready or stopped row whose domain is gone → `error`, "domain vanished";
* a ready, paused or hibernated row whose domain is shut off (the host rebooted, the guest
  powered itself off) → `stopped`; `POST /start` boots it again; shut off *with a managed save
  image* → `hibernated` (the next use restores it);
* a paused or hibernated row whose domain runs (`virsh resume`, `virsh start`) → `ready`;
* a ready row whose domain is paused (an operator's `virsh suspend`) → `paused`: the next use
  resumes it, where a command would otherwise wait on a frozen guest until its timeout;
* a stopped row whose domain runs (someone ran `virsh start`) → a start operation by the
  system, which makes it ready once SSH answers with the pinned host key;
* a domain of ours with no live row (a stray) → destroyed, with its workdir when that is a
  real directory directly inside the sandbox directory, once it has been a stray for
  `VSB_RECONCILE_STRAY_GRACE_SECONDS`; audited.

Rows mid-transition, or with any operation open, are left alone: their task owns them. Only
settled rows are compared, and each verdict is checked again against libvirt right before
it is acted on. Domain metadata is written by the host (libvirt's XML, never the guest).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

import redis
from django.conf import settings
from django.utils import timezone

from core.conf import vsb

from . import services
from .choices import SandboxState
from .drivers.base import PAUSED, RUNNING, SHUTOFF, DomainInfo
from .drivers.domain_xml import OVERLAY_NAME
from .models import Host, Sandbox
from .runtime import deployment_name, get_driver, get_ssh_pool

log = logging.getLogger(__name__)
S = SandboxState
HIBERNATED_REASON = "its domain was found shut off with a managed save image"


@dataclass
class Report:
    """What one pass saw and did (domain or sandbox names), for logs and tests."""

    host: str
    vanished: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    hibernated: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    strays_waiting: list[str] = field(default_factory=list)
    strays_destroyed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def __bool__(self) -> bool:
        return any(v for k, v in self.__dict__.items() if k != "host")


def is_ours(info: DomainInfo, host_name: str, deployment: str) -> bool:
    """A domain this host of this deployment made: its metadata says so, all three tags."""
    tags = info.tags
    return (
        bool(tags.get("sandbox"))
        and tags.get("host") == host_name
        and tags.get("deployment") == deployment
    )


def describe(info: DomainInfo) -> dict:
    return {
        "name": info.name,
        "uuid": info.uuid,
        "state": info.state,
        "tags": dict(info.tags),
        "disks": list(info.disks),
    }


def stray_workdir(disks: tuple[str, ...], sandbox_dir: str) -> str | None:
    """The workdir a stray's disks may be removed with: the directory of its overlay when
    that is a real directory (no symlink anywhere on its path) directly inside the sandbox
    directory. None otherwise: the domain goes, its files stay."""
    root = os.path.realpath(sandbox_dir)
    for disk in disks:
        if not os.path.isabs(disk) or os.path.basename(disk) != OVERLAY_NAME:
            continue
        workdir = os.path.dirname(os.path.normpath(disk))
        name = os.path.basename(workdir)
        if not name or name in (".", ".."):
            continue
        if os.path.dirname(workdir) not in (root, os.path.normpath(sandbox_dir)):
            continue
        if os.path.islink(workdir) or not os.path.isdir(workdir):
            continue
        if os.path.realpath(workdir) != os.path.join(root, name):
            continue
        return workdir
    return None


# ---- the grace period of strays ---------------------------------------------------------


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


def _stray_key(host_name: str, info: DomainInfo) -> str:
    # The libvirt UUID, not the name: a domain defined again under the same name starts over.
    return f"vsb:{deployment_name()}:stray:{host_name}:{info.uuid}"


def stray_age(host_name: str, info: DomainInfo, now: float) -> float:
    """Seconds since the host's reconcile first saw the domain as a stray (0 the first time).
    Kept in Redis, so every worker thread or process of the host agrees; lost with Redis,
    which only restarts the grace."""
    grace = vsb("RECONCILE_STRAY_GRACE_SECONDS")
    key = _stray_key(host_name, info)
    client = _redis()
    client.set(key, repr(now), nx=True, ex=max(3600, 4 * grace))
    first = client.get(key)
    return max(0.0, now - float(first)) if first else 0.0


def forget_strays(host_name: str, infos: list[DomainInfo]) -> None:
    """Domains that are no longer strays (a row appeared, or they are gone) start over."""
    if infos:
        _redis().delete(*(_stray_key(host_name, i) for i in infos))


# ---- the pass -----------------------------------------------------------------------------


def reconcile_host(host: Host, *, now: float | None = None) -> Report:
    """One pass over `host` (on its own worker). Driver errors propagate: the next pass
    tries again, and nothing was half-done (each correction is its own compare-and-set)."""
    now = time.time() if now is None else now
    driver = get_driver(host.libvirt_uri)
    deployment = deployment_name()
    report = Report(host=host.name)
    # Domains first, rows second: a create commits its row before its task defines the
    # domain, so every domain listed here already has its row visible below.
    domains = driver.list_domains()
    by_name = {d.name: d for d in domains}

    for sandbox in services.settled_sandboxes(host):
        _settle(driver, sandbox, by_name.get(sandbox.name), report)

    ours = [d for d in domains if is_ours(d, host.name, deployment)]
    live = services.live_sandbox_ids(_valid_ids(d.tags["sandbox"] for d in ours))
    strays = [d for d in ours if d.tags["sandbox"] not in live]
    forget_strays(host.name, [d for d in ours if d.tags["sandbox"] in live])
    for info in strays:
        _stray(driver, host, info, now, report)
    if report:
        log.warning("reconcile of host %s: %s", host.name, report.as_dict())
    return report


def _valid_ids(values) -> list[str]:
    ids = []
    for value in values:
        try:
            ids.append(str(uuid.UUID(value)))
        except ValueError:
            continue
    return ids


def _domain_of(sandbox: Sandbox, listed: DomainInfo | None) -> DomainInfo | None:
    """The sandbox's domain: its name, carrying its id. Another domain under the name (not
    ours) counts as none."""
    if listed is not None and listed.tags.get("sandbox") == str(sandbox.pk):
        return listed
    return None


def _settle(driver, sandbox: Sandbox, listed: DomainInfo | None, report: Report) -> None:
    domain = _domain_of(sandbox, listed)
    if domain is None:
        # Look once more, by name: the listing is a moment old.
        domain = _domain_of(sandbox, driver.get_domain(sandbox.name))
        if domain is None:
            get_ssh_pool().discard(str(sandbox.id))
            if services.reconcile_sandbox(
                sandbox, SandboxState.ERROR, services.DOMAIN_VANISHED, domain={"name": sandbox.name}
            ):
                report.vanished.append(sandbox.name)
        return
    if sandbox.state in (S.READY, S.PAUSED, S.HIBERNATED) and domain.state == SHUTOFF:
        domain = _still(driver, sandbox, SHUTOFF)
        if domain is None:
            return
        get_ssh_pool().discard(str(sandbox.id))
        if domain.managed_save:
            # Saved to disk (`virsh managedsave`, or a hibernation whose worker died before
            # it recorded it): it is hibernated, and wakes like one.
            if sandbox.state != S.HIBERNATED and services.reconcile_sandbox(
                sandbox, S.HIBERNATED, HIBERNATED_REASON, domain=describe(domain)
            ):
                report.hibernated.append(sandbox.name)
            return
        reason = "its domain was found shut off (host reboot, or the guest powered off)"
        if services.reconcile_sandbox(sandbox, S.STOPPED, reason, domain=describe(domain)):
            report.stopped.append(sandbox.name)
    elif sandbox.state in (S.PAUSED, S.HIBERNATED) and domain.state == RUNNING:
        domain = _still(driver, sandbox, RUNNING)
        if domain is None:
            return
        # Resumed or restored behind our back (`virsh resume`, `virsh start`): ready; a
        # restored one is a new QEMU, so SSH pools reconnect (a new ready_at).
        fields = {"ready_at": timezone.now()} if sandbox.state == S.HIBERNATED else {}
        if sandbox.state == S.HIBERNATED:
            get_ssh_pool().discard(str(sandbox.id))
        reason = f"its domain was found running while the sandbox was {sandbox.state}"
        if services.reconcile_sandbox(sandbox, S.READY, reason, domain=describe(domain), **fields):
            report.woken.append(sandbox.name)
    elif sandbox.state == S.READY and domain.state == PAUSED:
        # Settled rows only: a snapshot's own pause has its operation open.
        if _still(driver, sandbox, PAUSED) is None:
            return
        reason = "its domain was found paused (virsh suspend); the next use resumes it"
        if services.reconcile_sandbox(sandbox, S.PAUSED, reason, domain=describe(domain)):
            report.paused.append(sandbox.name)
    elif sandbox.state == S.STOPPED and domain.state == RUNNING:
        if _still(driver, sandbox, RUNNING) is None:
            return
        reason = "its domain was found running; checking that SSH answers"
        if services.adopt_running_sandbox(sandbox, reason) is not None:
            report.adopted.append(sandbox.name)
    # Crashed or other: nothing the row can say about it; left to the operations and to
    # people.


def _still(driver, sandbox: Sandbox, state: str) -> DomainInfo | None:
    """The sandbox's domain if it is still in `state` (the listing is a moment old)."""
    domain = _domain_of(sandbox, driver.get_domain(sandbox.name))
    return domain if domain is not None and domain.state == state else None


def _stray(driver, host: Host, info: DomainInfo, now: float, report: Report) -> None:
    grace = vsb("RECONCILE_STRAY_GRACE_SECONDS")
    age = stray_age(host.name, info, now)
    if age < grace:
        report.strays_waiting.append(info.name)
        return
    # Right before destroying: still the same domain, and still no live row.
    current = driver.get_domain(info.name)
    if current is None or current.uuid != info.uuid or current.tags != info.tags:
        forget_strays(host.name, [info])
        return
    if services.live_sandbox_ids([info.tags["sandbox"]]):
        forget_strays(host.name, [info])
        return
    workdir = stray_workdir(current.disks, vsb("SANDBOX_DIR"))
    reason = (
        f"domain with this host's and deployment's metadata but no live sandbox row, "
        f"for {age:.0f} s (grace {grace} s)"
    )
    driver.destroy(info.name, workdir)
    forget_strays(host.name, [info])
    services.record_stray_destroyed(host, describe(current), workdir, reason)
    report.strays_destroyed.append(info.name)
