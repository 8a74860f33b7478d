"""Domain XML for sandbox clones, and the few things we read back out of libvirt's XML.

The shape follows the measured recipe (/work/shared/vm-recipe.md §2). Every user-supplied value
goes through xml.etree so it is escaped; values that end up inside QEMU's own option syntax
(the -netdev/-device strings) are validated instead, because commas there would let a caller
smuggle extra QEMU options past libvirt.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import xml.etree.ElementTree as ET

from .base import CloneSpec, LibvirtNetwork, PortForward

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
TAGS_NS = "urn:virsh-sandbox:tags:1"

OVERLAY_NAME = "disk.qcow2"
CONSOLE_LOG_NAME = "console.log"

DOMAIN_TYPES = ("qemu", "kvm")

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# XML 1.0 cannot carry most C0 control characters at all, escaped or not.
_XML_INVALID_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def overlay_path(spec: CloneSpec) -> str:
    """Where the clone's qcow2 overlay lives: always inside the sandbox's own workdir."""
    return os.path.join(spec.workdir, OVERLAY_NAME)


def console_log_path(spec: CloneSpec) -> str:
    """The serial console log (kernel and init output): useful when a guest never comes up."""
    return os.path.join(spec.workdir, CONSOLE_LOG_NAME)


def random_mac() -> str:
    """A MAC in QEMU's locally administered 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def build_domain_xml(spec: CloneSpec, domain_type: str = "qemu") -> str:
    """The persistent definition of a sandbox domain booting from its overlay."""
    if domain_type not in DOMAIN_TYPES:
        raise ValueError(f"domain type must be one of {DOMAIN_TYPES}, not {domain_type!r}")
    if not spec.name:
        raise ValueError("a domain needs a name")
    if spec.vcpus < 1 or spec.memory_mb < 16:
        raise ValueError(
            f"{spec.name}: needs at least 1 vCPU and 16 MiB (got {spec.vcpus}, {spec.memory_mb})"
        )
    mac = (spec.mac or random_mac()).lower()
    if not _MAC_RE.match(mac):
        raise ValueError(f"{spec.name}: {spec.mac!r} is not a MAC address like 52:54:00:12:34:56")

    root = ET.Element("domain", {"type": domain_type})
    if isinstance(spec.network, PortForward):
        # A literal xmlns attribute plus prefixed tag names keeps the output stable without
        # ET.register_namespace, which is process-global state.
        root.set("xmlns:qemu", QEMU_NS)
    _text(root, "name", spec.name)
    _metadata(root, spec.tags)
    _text(root, "memory", str(spec.memory_mb), unit="MiB")
    _text(root, "vcpu", str(spec.vcpus))

    os_el = ET.SubElement(root, "os")
    _text(os_el, "type", "hvm", arch="x86_64", machine="q35")
    if spec.kernel:
        _text(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _text(os_el, "initrd", spec.initrd)
        if spec.cmdline:
            _text(os_el, "cmdline", spec.cmdline)
    else:
        ET.SubElement(os_el, "boot", dev="hd")

    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    if domain_type == "qemu":
        # The TCG default is a 1 GiB translation cache per guest; 128 MiB boots as fast and
        # saves ~180 MiB of host memory per sandbox (recipe §3).
        tcg = ET.SubElement(features, "tcg")
        _text(tcg, "tb-cache", "128", unit="MiB")
        cpu = ET.SubElement(root, "cpu", mode="custom", match="exact", check="none")
        _text(cpu, "model", "qemu64", fallback="allow")
    else:
        ET.SubElement(root, "cpu", mode="host-passthrough", check="none")

    ET.SubElement(root, "clock", offset="utc")
    _text(root, "on_poweroff", "destroy")
    _text(root, "on_reboot", "restart")
    _text(root, "on_crash", "destroy")

    devices = ET.SubElement(root, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    # cache=unsafe: a sandbox disk is disposable, and flushes under TCG are expensive.
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", cache="unsafe", discard="unmap")
    ET.SubElement(disk, "source", file=overlay_path(spec))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")

    if isinstance(spec.network, LibvirtNetwork):
        _interface(devices, spec.network, mac)

    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=console_log_path(spec))
    ET.SubElement(serial, "target", port="0")
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")

    if isinstance(spec.network, PortForward):
        _port_forward(root, spec.network, mac, spec.name)
    return ET.tostring(root, encoding="unicode")


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def _metadata(root: ET.Element, tags: dict[str, str]) -> None:
    metadata = ET.SubElement(root, "metadata")
    tags_el = ET.SubElement(metadata, "vsb:tags", {"xmlns:vsb": TAGS_NS})
    for key, value in sorted(tags.items()):
        for part in (key, value):
            if not isinstance(part, str) or _XML_INVALID_RE.search(part):
                raise ValueError(
                    f"tag {key!r}={value!r}: tags must be strings without control characters"
                )
        if not key:
            raise ValueError("tag names must not be empty")
        _text(tags_el, "vsb:tag", value, name=key)


def _interface(devices: ET.Element, network: LibvirtNetwork, mac: str) -> None:
    if network.kind not in ("network", "bridge"):
        raise ValueError(f"network kind must be 'network' or 'bridge', not {network.kind!r}")
    iface = ET.SubElement(devices, "interface", type=network.kind)
    ET.SubElement(iface, "source", {network.kind: network.name})
    ET.SubElement(iface, "mac", address=mac)
    ET.SubElement(iface, "model", type="virtio")


def _port_forward(root: ET.Element, fwd: PortForward, mac: str, name: str) -> None:
    try:
        bind = ipaddress.IPv4Address(fwd.bind_address)
    except ValueError:
        raise ValueError(
            f"{name}: port-forward bind address {fwd.bind_address!r} is not an IPv4 address"
        ) from None
    for label, port in (("host", fwd.host_port), ("guest", fwd.guest_port)):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"{name}: {label} port {port!r} is not in 1..65535")
    cmd = ET.SubElement(root, "qemu:commandline")
    # restrict=on: the guest reaches nothing, not even the host; only the forward comes in.
    netdev = f"user,id=vmnet0,restrict=on,hostfwd=tcp:{bind}:{fwd.host_port}-:{fwd.guest_port}"
    if fwd.egress_relay:
        netdev += f",guestfwd=tcp:{_relay_address(fwd, name)}-cmd:{_relay_command(fwd, name)}"
    # An explicit bus/addr: without one QEMU takes slot 2, which libvirt already gave to
    # virtio-serial (recipe §2).
    device = f"virtio-net-pci,netdev=vmnet0,bus=pcie.0,addr=0x10,mac={mac}"
    for value in ("-netdev", netdev, "-device", device):
        ET.SubElement(cmd, "qemu:arg", value=value)


# What QEMU may be handed as one argument of the relay command: it splits the command like a
# shell would (no shell runs), and a comma would end the -netdev option.
_RELAY_ARG_RE = re.compile(r"^[A-Za-z0-9_./:=@+-]+$")


def _relay_address(fwd: PortForward, name: str) -> str:
    address, port = fwd.egress_to or ("", 0)
    try:
        address = ipaddress.IPv4Address(address)
    except ValueError:
        raise ValueError(
            f"{name}: egress relay address {address!r} is not an IPv4 address"
        ) from None
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{name}: egress relay port {port!r} is not in 1..65535")
    return f"{address}:{port}"


def _relay_command(fwd: PortForward, name: str) -> str:
    for arg in fwd.egress_relay:
        if not isinstance(arg, str) or not _RELAY_ARG_RE.match(arg):
            raise ValueError(f"{name}: egress relay argument {arg!r} is not a plain word")
    return " ".join(fwd.egress_relay)


# ---- reading libvirt's XML back -------------------------------------------------------------


def parse_tags(xml: str | ET.Element) -> dict[str, str]:
    """The sandbox tags stored in a domain's <metadata>, {} when there are none."""
    root = _root(xml)
    tags_el = root.find(f"metadata/{{{TAGS_NS}}}tags")
    if tags_el is None:
        return {}
    return {t.get("name", ""): t.text or "" for t in tags_el.findall(f"{{{TAGS_NS}}}tag")}


def disk_sources(xml: str | ET.Element) -> tuple[str, ...]:
    """Local paths of every <disk device='disk'>, in document order (file or block sources)."""
    paths = []
    for disk in _root(xml).findall("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source = disk.find("source")
        if source is None:
            continue
        path = source.get("file") or source.get("dev")
        if path:
            paths.append(path)
    return tuple(paths)


def first_disk(xml: str | ET.Element) -> tuple[str | None, str | None, str | None]:
    """(disk type, source path, driver format) of the first <disk device='disk'>."""
    for disk in _root(xml).findall("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        source = disk.find("source")
        driver = disk.find("driver")
        path = None if source is None else (source.get("file") or source.get("dev"))
        return disk.get("type"), path, None if driver is None else driver.get("type")
    return None, None, None


def _root(xml: str | ET.Element) -> ET.Element:
    return ET.fromstring(xml) if isinstance(xml, str) else xml
