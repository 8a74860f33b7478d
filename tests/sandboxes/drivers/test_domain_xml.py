"""The domain XML: parsed back, never compared as strings."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from sandboxes.drivers.base import CloneSpec, LibvirtNetwork, PortForward
from sandboxes.drivers.domain_xml import (
    QEMU_NS,
    TAGS_NS,
    build_domain_xml,
    disk_sources,
    first_disk,
    parse_tags,
)


def spec(**overrides) -> CloneSpec:
    fields = dict(
        name="sbx-1a2b3c4d",
        source_disk="/images/base.qcow2",
        workdir="/var/lib/vsb/sbx-1a2b3c4d",
        network=PortForward(host_port=40022),
        mac="52:54:00:aa:bb:cc",
    )
    fields.update(overrides)
    return CloneSpec(**fields)


def qemu_args(root: ET.Element) -> list[str]:
    return [a.get("value") for a in root.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]


def test_it_builds_a_tcg_q35_domain_with_a_small_translation_cache():
    root = ET.fromstring(build_domain_xml(spec(), "qemu"))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "sbx-1a2b3c4d"
    assert root.find("os/type").get("machine") == "q35"
    tb = root.find("features/tcg/tb-cache")
    assert (tb.text, tb.get("unit")) == ("128", "MiB")
    assert root.find("cpu/model").text == "qemu64"
    assert root.find("uuid") is None  # libvirt assigns it


def test_it_uses_host_passthrough_and_no_tcg_bits_under_kvm():
    root = ET.fromstring(build_domain_xml(spec(), "kvm"))
    assert root.get("type") == "kvm"
    assert root.find("features/tcg") is None
    assert root.find("cpu").get("mode") == "host-passthrough"


def test_it_refuses_an_unknown_domain_type():
    with pytest.raises(ValueError, match="domain type"):
        build_domain_xml(spec(), "xen")


def test_it_boots_the_overlay_with_unsafe_cache_and_discard():
    root = ET.fromstring(build_domain_xml(spec(), "qemu"))
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == "/var/lib/vsb/sbx-1a2b3c4d/disk.qcow2"
    driver = disk.find("driver")
    assert (driver.get("type"), driver.get("cache"), driver.get("discard")) == (
        "qcow2",
        "unsafe",
        "unmap",
    )
    assert disk.find("target").get("bus") == "virtio"


def test_it_writes_the_serial_console_to_the_workdir_and_has_agent_and_rng():
    root = ET.fromstring(build_domain_xml(spec(), "qemu"))
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").get("path") == "/var/lib/vsb/sbx-1a2b3c4d/console.log"
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"
    assert root.find("devices/rng").get("model") == "virtio"


def test_it_has_no_usb_no_balloon_and_no_graphics():
    root = ET.fromstring(build_domain_xml(spec(), "qemu"))
    assert root.find("devices/controller[@type='usb']").get("model") == "none"
    assert root.find("devices/memballoon").get("model") == "none"
    for tag in ("graphics", "video", "input", "sound"):
        assert root.find(f"devices/{tag}") is None


def test_it_forwards_the_ssh_port_through_restricted_slirp():
    root = ET.fromstring(
        build_domain_xml(spec(network=PortForward(40022, "127.0.0.1", 22)), "qemu")
    )
    assert qemu_args(root) == [
        "-netdev",
        "user,id=vmnet0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22",
        "-device",
        "virtio-net-pci,netdev=vmnet0,bus=pcie.0,addr=0x10,mac=52:54:00:aa:bb:cc",
    ]
    assert root.find("devices/interface") is None


@pytest.mark.parametrize("bind", ["127.0.0.1,hostfwd=tcp::2222-:22", "localhost", "::1"])
def test_it_refuses_a_bind_address_that_could_inject_qemu_options(bind):
    with pytest.raises(ValueError, match="bind address"):
        build_domain_xml(spec(network=PortForward(40022, bind)), "qemu")


TO = ("10.0.2.100", 3128)
RELAY = ("/usr/bin/python3", "-I", "-S", "/e/relay.py", "/e/h.sock", "5f0c3a52-4a59")


def test_the_egress_relay_is_the_guests_one_way_out_of_restricted_slirp():
    fwd = PortForward(40022, egress_relay=RELAY, egress_to=TO)
    netdev = qemu_args(ET.fromstring(build_domain_xml(spec(network=fwd), "qemu")))[1]
    assert netdev == (
        "user,id=vmnet0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22,"
        "guestfwd=tcp:10.0.2.100:3128-cmd:/usr/bin/python3 -I -S /e/relay.py /e/h.sock 5f0c3a52-4a59"
    )


@pytest.mark.parametrize("arg", ["/e/relay.py,hostfwd=tcp::2222-:22", "a b", "$(id)", "'x'", "", 5])
def test_a_relay_argument_that_could_inject_options_or_words_is_refused(arg):
    with pytest.raises(ValueError, match="egress relay argument"):
        fwd = PortForward(40022, egress_relay=(*RELAY, arg), egress_to=TO)
        build_domain_xml(spec(network=fwd), "qemu")


@pytest.mark.parametrize(
    "to", [None, ("10.0.2.100,hostfwd=tcp::1-:22", 3128), ("::1", 3128), ("10.0.2.100", 0)]
)
def test_a_relay_without_a_plain_address_and_port_is_refused(to):
    with pytest.raises(ValueError, match="egress relay (address|port)"):
        build_domain_xml(spec(network=PortForward(40022, egress_relay=RELAY, egress_to=to)), "qemu")


@pytest.mark.parametrize("port", [0, 70000])
def test_it_refuses_ports_out_of_range(port):
    with pytest.raises(ValueError, match="port"):
        build_domain_xml(spec(network=PortForward(port)), "qemu")


def test_it_puts_a_libvirt_network_nic_in_devices_without_qemu_args():
    root = ET.fromstring(build_domain_xml(spec(network=LibvirtNetwork("isolated")), "qemu"))
    iface = root.find("devices/interface")
    assert iface.get("type") == "network"
    assert iface.find("source").get("network") == "isolated"
    assert iface.find("mac").get("address") == "52:54:00:aa:bb:cc"
    assert iface.find("model").get("type") == "virtio"
    assert root.find(f"{{{QEMU_NS}}}commandline") is None


def test_it_attaches_a_bridge_nic():
    root = ET.fromstring(
        build_domain_xml(spec(network=LibvirtNetwork("br0", kind="bridge")), "qemu")
    )
    assert root.find("devices/interface").get("type") == "bridge"
    assert root.find("devices/interface/source").get("bridge") == "br0"


def test_it_picks_a_random_qemu_mac_when_none_is_given():
    macs = set()
    for _ in range(5):
        root = ET.fromstring(build_domain_xml(spec(mac=None), "qemu"))
        mac = qemu_args(root)[3].rsplit("mac=", 1)[1]
        assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
        macs.add(mac)
    assert len(macs) > 1


def test_it_refuses_a_malformed_mac():
    with pytest.raises(ValueError, match="MAC"):
        build_domain_xml(spec(mac="52:54:00:aa:bb:cc,x=1"), "qemu")


def test_it_boots_the_kernel_directly_when_one_is_given():
    root = ET.fromstring(
        build_domain_xml(
            spec(kernel="/img/vmlinuz", initrd="/img/initrd.img", cmdline="root=/dev/vda a<b&c"),
            "qemu",
        )
    )
    assert root.findtext("os/kernel") == "/img/vmlinuz"
    assert root.findtext("os/initrd") == "/img/initrd.img"
    assert root.findtext("os/cmdline") == "root=/dev/vda a<b&c"
    assert root.find("os/boot") is None


def test_it_boots_from_disk_without_a_kernel():
    root = ET.fromstring(build_domain_xml(spec(), "qemu"))
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "hd"


def test_it_stores_tags_in_namespaced_metadata_and_escapes_them():
    nasty = {"sandbox": "42", "note": "</vsb:tag><evil/>&amp; \"'", "a&b": "x"}
    xml = build_domain_xml(spec(tags=nasty), "qemu")
    root = ET.fromstring(xml)
    assert root.find(f"metadata/{{{TAGS_NS}}}tags") is not None
    assert root.find(".//evil") is None
    assert parse_tags(xml) == nasty


def test_it_refuses_tags_xml_cannot_carry():
    with pytest.raises(ValueError, match="control characters"):
        build_domain_xml(spec(tags={"k": "bell\x07"}), "qemu")


def test_it_reads_tags_and_disks_back_from_libvirt_style_xml():
    xml = f"""<domain type='qemu'><name>x</name>
      <metadata><v:tags xmlns:v="{TAGS_NS}"><v:tag name="sandbox">7</v:tag></v:tags></metadata>
      <devices>
        <disk type='file' device='cdrom'><source file='/iso/a.iso'/></disk>
        <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/d/one.img'/></disk>
        <disk type='block' device='disk'><source dev='/dev/sdb'/></disk>
      </devices></domain>"""
    assert parse_tags(xml) == {"sandbox": "7"}
    assert disk_sources(xml) == ("/d/one.img", "/dev/sdb")
    assert first_disk(xml) == ("file", "/d/one.img", "raw")
    assert parse_tags("<domain><name>y</name></domain>") == {}
