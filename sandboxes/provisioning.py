"""Worker-side steps that turn a Sandbox row into a running guest and back. Called only by
tasks on the sandbox's own host; every step checks reality first so a redelivered task is
harmless."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from core.conf import vsb
from egress import services as egress

from . import lifecycle, services
from .choices import NetworkMode, SandboxState, SourceKind
from .drivers.base import (
    PAUSED,
    RUNNING,
    CloneSpec,
    LibvirtNetwork,
    PermanentDriverError,
    PortForward,
)
from .drivers.domain_xml import OVERLAY_NAME
from .models import Sandbox
from .runtime import deployment_name, get_ca, get_driver, get_ssh_pool

log = logging.getLogger(__name__)
HOSTKEY_RE = re.compile(r"^vsb-hostkey: (ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+)$", re.MULTILINE)


def driver_for(sandbox: Sandbox):
    return get_driver(sandbox.host.libvirt_uri)


def console_log_path(sandbox: Sandbox) -> Path:
    return Path(sandbox.workdir) / "console.log"


# The serial console is written by the guest: read a bounded piece of it, never all.
CONSOLE_HEAD_BYTES = 1 << 20
CONSOLE_TAIL_BYTES = 64 * 1024


def _console_bytes(sandbox: Sandbox, *, tail: bool) -> str:
    try:
        with open(console_log_path(sandbox), "rb") as f:
            if tail:
                f.seek(max(0, f.seek(0, os.SEEK_END) - CONSOLE_TAIL_BYTES))
                return f.read(CONSOLE_TAIL_BYTES).decode(errors="replace")
            return f.read(CONSOLE_HEAD_BYTES).decode(errors="replace")
    except OSError:
        return ""


def console_tail(sandbox: Sandbox, lines: int = 15) -> str:
    text = _console_bytes(sandbox, tail=True)
    return "\n".join(text.strip().splitlines()[-lines:])


def console_host_key(sandbox: Sandbox) -> str | None:
    """The host key the guest's first-boot script printed on its serial console. The first
    line wins: it is written before sshd (and so any user code) runs, while a later line
    could be forged by root inside the sandbox writing to the serial port. The first-boot
    line comes within the first megabyte; nothing after it is read."""
    text = _console_bytes(sandbox, tail=False)
    found = HOSTKEY_RE.findall(text.replace("\r", ""))
    return found[0] if found else None


def clone_spec(sandbox: Sandbox) -> CloneSpec:
    source = sandbox.source
    driver = driver_for(sandbox)
    if source.kind == SourceKind.DOMAIN:
        disk = driver.source_disk(source.domain_name)
        kernel = initrd = cmdline = None
    else:
        disk = source.disk_path
        kernel, initrd = source.kernel or None, source.initrd or None
        cmdline = None
        if kernel:
            ca_type, ca_b64 = get_ca().public_key_line().split()[:2]
            # The guest's first-boot script reads these: trust our CA, accept only this
            # sandbox's principal, and take the sandbox's name.
            cmdline = (
                f"{source.cmdline} vsb.ca={ca_type}:{ca_b64} "
                f"vsb.principals={sandbox.principal} vsb.hostname={sandbox.name} "
                f"vsb.instance={sandbox.id}"
            ).strip()
    if sandbox.network_mode == NetworkMode.PORT_FORWARD:
        # The guest's one way out: the host's egress proxy, through a relay QEMU spawns per
        # connection to the proxy's address (docs/egress.md); the guest learns it at boot.
        relay = egress.relay_argv(sandbox)
        if relay and cmdline:
            cmdline += f" vsb.proxy={egress.GUEST_PROXY_URL}"
        network = PortForward(
            host_port=sandbox.ssh_port,
            bind_address=sandbox.ssh_host or "127.0.0.1",
            egress_relay=relay,
            egress_to=(egress.GUEST_PROXY_ADDRESS, egress.GUEST_PROXY_PORT),
        )
    else:
        network = LibvirtNetwork(
            name=vsb("LIBVIRT_NETWORK"),
            kind="bridge" if sandbox.network_mode == NetworkMode.BRIDGE else "network",
        )
    return CloneSpec(
        name=sandbox.name,
        source_disk=disk,
        source_format=source.disk_format or "qcow2",
        workdir=sandbox.workdir,
        vcpus=sandbox.vcpus,
        memory_mb=sandbox.memory_mb,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        network=network,
        mac=sandbox.mac_address or None,
        tags=domain_tags(sandbox),
        from_snapshot=fork_origin_disk(sandbox),
    )


def domain_tags(sandbox: Sandbox) -> dict[str, str]:
    """What a sandbox's domain carries in its <metadata>: the sandbox id (a retried create
    recognises its own domain), and the host and deployment it belongs to (the reconcile
    touches only domains of its own host and installation)."""
    return {
        "sandbox": str(sandbox.id),
        "host": sandbox.host.name,
        "deployment": deployment_name(),
    }


def fork_origin_disk(sandbox: Sandbox) -> tuple[str, str] | None:
    """(origin overlay, snapshot name) for a fork, else None."""
    snap = sandbox.forked_from
    if snap is None:
        return None
    return (os.path.join(snap.sandbox.workdir, OVERLAY_NAME), snap.name)


def ensure_free_port(sandbox: Sandbox) -> None:
    """The port was chosen from the database; something outside us may still hold it."""
    if sandbox.network_mode != NetworkMode.PORT_FORWARD:
        return
    if services.port_is_free(sandbox.ssh_port, sandbox.ssh_host or "127.0.0.1"):
        return
    if driver_for(sandbox).get_domain(sandbox.name):
        return  # our own domain already holds it (a retried task)
    port = services.allocate_port(sandbox.host, bindable=True)
    services.set_sandbox_fields(sandbox.pk, ssh_port=port)
    sandbox.ssh_port = port


def check_port_before_start(sandbox: Sandbox) -> None:
    """A stopped domain keeps its forwarded port in its definition; after a host reboot
    another process may hold it, and QEMU would then fail to start with a terse message."""
    if sandbox.network_mode != NetworkMode.PORT_FORWARD or not sandbox.ssh_port:
        return
    if driver_for(sandbox).state(sandbox.name) == RUNNING:
        return  # our own QEMU holds it
    if not services.port_is_free(sandbox.ssh_port, sandbox.ssh_host or "127.0.0.1"):
        raise PermanentDriverError(
            f"port {sandbox.ssh_port} on {sandbox.ssh_host or '127.0.0.1'}, where this "
            f"sandbox's SSH is forwarded, is held by another process on host "
            f"{sandbox.host.name}: free it and start again, or destroy the sandbox"
        )


def ssh_target(sandbox: Sandbox, pinned: str | None):
    from .remote.ssh import SSHTarget

    return SSHTarget(
        host=sandbox.ssh_host or sandbox.ip_address,
        port=sandbox.ssh_port or 22,
        username=sandbox.ssh_username,
        pinned_host_key=pinned,
    )


def credential_factory(sandbox: Sandbox):
    def issue():
        return get_ca().issue(
            [sandbox.principal],
            ttl_seconds=vsb("CERT_TTL_SECONDS"),
            identity=f"sandbox:{sandbox.id}",
        )

    return issue


def pooled_client(sandbox: Sandbox):
    """A live SSH connection to the sandbox, reused across commands on this worker process
    while the guest stays up: each time it becomes ready (booted, started, restored, maybe
    by the lifecycle pool, another process) `ready_at` moves and a new connection is made."""
    return get_ssh_pool().get(
        str(sandbox.id),
        ssh_target(sandbox, sandbox.host_key or None),
        credential_factory(sandbox),
        generation=sandbox.ready_at,
    )


def discover_address(sandbox: Sandbox) -> str | None:
    """Guest IPv4 for bridged/NAT sandboxes: guest agent, then DHCP lease, then ARP."""
    driver = driver_for(sandbox)
    for source in vsb("IP_SOURCES"):
        addresses = driver.interface_addresses(sandbox.name, source)
        if addresses:
            return addresses[0]
    return None


def leave_idle(sandbox: Sandbox) -> None:
    """Before a shutdown: a hibernated domain forgets its saved memory (a later start must
    boot, not restore), a paused one runs again so it can act on the power button."""
    driver = driver_for(sandbox)
    driver.managed_save_remove(sandbox.name)
    if driver.state(sandbox.name) == PAUSED:
        driver.resume(sandbox.name)


def teardown(sandbox: Sandbox) -> None:
    get_ssh_pool().discard(str(sandbox.id))
    driver_for(sandbox).destroy(sandbox.name, sandbox.workdir)


def mark_error(sandbox: Sandbox, reason: str) -> None:
    lifecycle.transition(sandbox.pk, SandboxState.ERROR, error=reason[:4000])
