"""LibvirtDriver against the real libvirtd + QEMU (TCG). Every domain a test creates is
destroyed by a finalizer, also when the test fails."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sandboxes.drivers.base import RUNNING, SHUTOFF, CloneSpec, PermanentDriverError, PortForward
from sandboxes.drivers.domain_xml import QEMU_NS

from .conftest import make_qcow2, unique_name

pytestmark = pytest.mark.e2e

URI = "qemu:///system"


def libvirt_reachable() -> bool:
    return subprocess.run(["virsh", "-c", URI, "list"], capture_output=True).returncode == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def guest_image() -> Path | None:
    """The image scripts/test.sh built for this checkout, else any complete cached one."""
    if os.environ.get("VSB_TEST_IMAGE_DIR"):
        return Path(os.environ["VSB_TEST_IMAGE_DIR"])
    for d in sorted(glob.glob("/var/cache/virsh-sandbox/images/debian-12-*/")):
        p = Path(d)
        if all((p / f).is_file() for f in ("base.qcow2", "vmlinuz", "initrd.img", "manifest.json")):
            return p
    return None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def system_driver():
    # A missing daemon is a broken set-up, not a reason to skip: scripts/start-services.sh
    # starts it.
    assert libvirt_reachable(), f"libvirt at {URI} is not reachable (run scripts/start-services.sh)"
    from sandboxes.drivers.libvirt_driver import LibvirtDriver

    d = LibvirtDriver(URI, domain_type="qemu")
    yield d
    d.close()


@pytest.fixture
def area():
    # pytest's tmp_path is mode 0700 all the way up; libvirt's QEMU user must traverse ours.
    path = Path(tempfile.mkdtemp(prefix="vsbtest-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def blank_base(area: Path) -> Path:
    base = make_qcow2(area / "base.qcow2", "64M")
    base.chmod(0o444)  # the way golden images are kept
    return base


@pytest.fixture
def cleanup(system_driver):
    """Register (name, workdir) pairs; each is destroyed after the test, pass or fail."""
    created: list[tuple[str, str]] = []
    yield created
    for name, workdir in created:
        try:
            system_driver.destroy(name, workdir)
        except Exception:
            subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
            subprocess.run(
                ["virsh", "-c", URI, "undefine", name, "--snapshots-metadata", "--nvram"],
                capture_output=True,
            )


def spec_for(area: Path, base: Path, **overrides) -> CloneSpec:
    name = overrides.pop("name", None) or unique_name()
    fields = dict(
        name=name,
        source_disk=str(base),
        workdir=str(area / "sandboxes" / name),
        network=PortForward(host_port=free_port()),
        tags={"sandbox": name},
    )
    fields.update(overrides)
    return CloneSpec(**fields)


def test_it_defines_and_starts_a_linked_clone_under_tcg(system_driver, area, blank_base, cleanup):
    (area / "sandboxes").mkdir(mode=0o755)
    spec = spec_for(area, blank_base)
    cleanup.append((spec.name, spec.workdir))
    t0 = time.monotonic()
    info = system_driver.clone(spec)
    t1 = time.monotonic()
    system_driver.start(spec.name)
    t2 = time.monotonic()
    print(f"\nclone+define {t1 - t0:.3f} s, start {t2 - t1:.3f} s")
    assert info.state == SHUTOFF
    assert system_driver.state(spec.name) == RUNNING
    system_driver.start(spec.name)  # already running: no-op
    root = ET.fromstring(system_driver._connection().lookupByName(spec.name).XMLDesc(0))
    assert root.get("type") == "qemu"
    args = [a.get("value") for a in root.iter(f"{{{QEMU_NS}}}arg")]
    assert f"hostfwd=tcp:127.0.0.1:{spec.network.host_port}-:22" in args[1]
    assert system_driver.get_domain(spec.name).tags == spec.tags


def test_it_forces_off_a_guest_that_ignores_acpi_after_the_timeout(
    system_driver, area, blank_base, cleanup
):
    (area / "sandboxes").mkdir(mode=0o755)
    spec = spec_for(area, blank_base)  # a blank disk: the guest sits in SeaBIOS, deaf to ACPI
    cleanup.append((spec.name, spec.workdir))
    system_driver.clone(spec)
    system_driver.start(spec.name)
    t0 = time.monotonic()
    system_driver.shutdown(spec.name, timeout=1.5)
    elapsed = time.monotonic() - t0
    assert system_driver.state(spec.name) == SHUTOFF
    assert 1.5 <= elapsed < 15
    system_driver.shutdown(spec.name, timeout=1.5)  # already off: no-op


def test_it_destroys_the_domain_and_overlay_but_never_the_backing_file(
    system_driver, area, blank_base, cleanup
):
    (area / "sandboxes").mkdir(mode=0o755)
    spec = spec_for(area, blank_base)
    cleanup.append((spec.name, spec.workdir))
    before = sha256(blank_base)
    system_driver.clone(spec)
    system_driver.start(spec.name)
    time.sleep(0.5)
    system_driver.destroy(spec.name, spec.workdir)
    assert system_driver.get_domain(spec.name) is None
    assert not os.path.exists(spec.workdir)
    assert blank_base.exists() and sha256(blank_base) == before
    system_driver.destroy(spec.name, spec.workdir)  # twice is fine


def test_it_leaves_no_overlay_behind_when_define_fails(system_driver, area, blank_base, cleanup):
    spec = spec_for(area, blank_base, name=f"{unique_name()}/bad")
    cleanup.append((spec.name, spec.workdir))
    with pytest.raises(PermanentDriverError, match="cannot contain"):
        system_driver.clone(spec)
    assert not os.path.exists(os.path.join(spec.workdir, "disk.qcow2"))
    assert not os.path.exists(spec.workdir)


def test_it_boots_the_guest_image_until_the_agent_answers_and_sets_its_clock(
    system_driver, area, cleanup
):
    image = guest_image()
    assert image is not None, "no guest image: run scripts/build-guest-image.sh"
    manifest = json.loads((image / "manifest.json").read_text())
    spec = spec_for(
        area,
        image / "base.qcow2",
        kernel=str(image / "vmlinuz"),
        initrd=str(image / "initrd.img"),
        cmdline=manifest["fast_cmdline"],
    )
    cleanup.append((spec.name, spec.workdir))
    system_driver.clone(spec)
    t0 = time.monotonic()
    system_driver.start(spec.name)
    deadline = t0 + 60
    while not system_driver.guest_ping(spec.name):
        assert time.monotonic() < deadline, "guest agent did not answer within 60 s:\n" + console(
            spec
        )
        time.sleep(0.5)
    print(f"\nguest agent answered {time.monotonic() - t0:.1f} s after start")
    system_driver.set_guest_time(spec.name)
    assert "10.0.2.15" in system_driver.interface_addresses(spec.name, "agent")
    assert system_driver.interface_addresses(spec.name, "lease") == []  # no libvirt network
    t1 = time.monotonic()
    system_driver.shutdown(spec.name, timeout=30)
    print(f"ACPI shutdown took {time.monotonic() - t1:.1f} s")
    assert system_driver.state(spec.name) == SHUTOFF


def console(spec: CloneSpec) -> str:
    try:
        return Path(spec.workdir, "console.log").read_text(errors="replace")[-2000:]
    except OSError as exc:
        return f"(no console log: {exc})"


def test_the_guest_learns_the_egress_proxy_from_its_cmdline_in_systemd_mode(
    system_driver, area, cleanup
):
    """vsb.proxy= reaches every SSH session (pam_env reads /etc/environment) and apt; the
    guest's apt sources are the host's Debian ones. Nothing is fetched: the guest stays
    restricted, only its settings are read."""
    from core.hostapt import guest_sources_list
    from sandboxes.remote import ssh
    from sandboxes.remote.ca import CertificateAuthority

    image = guest_image()
    assert image is not None, "no guest image: run scripts/build-guest-image.sh"
    manifest = json.loads((image / "manifest.json").read_text())
    ca = CertificateAuthority(str(area / "ca" / "ca_key"))
    ca.ensure()
    ca_type, ca_b64 = ca.public_key_line().split()[:2]
    proxy = "http://10.0.2.100:3128"
    spec = spec_for(
        area,
        image / "base.qcow2",
        kernel=str(image / "vmlinuz"),
        initrd=str(image / "initrd.img"),
        cmdline=f"{manifest['systemd_cmdline']} vsb.ca={ca_type}:{ca_b64} "
        f"vsb.principals=proxytest vsb.proxy={proxy}",
    )
    cleanup.append((spec.name, spec.workdir))
    system_driver.clone(spec)
    system_driver.start(spec.name)
    credential = ca.issue(["proxytest"])
    deadline = time.monotonic() + 240
    client = None
    while client is None:
        assert time.monotonic() < deadline, "no SSH login within 240 s:\n" + console(spec)
        if ssh.probe_ssh_banner("127.0.0.1", spec.network.host_port, timeout=1):
            try:
                client = ssh.connect(
                    ssh.SSHTarget("127.0.0.1", spec.network.host_port), credential, timeout=10
                )
            except ssh.RemoteError:
                pass
        time.sleep(0.5)
    try:
        script = (
            "cat /etc/environment; echo ===; cat /etc/apt/apt.conf.d/80vsb-proxy; echo ===; "
            "env; echo ===; apt-config dump | grep -i '::proxy'; echo ===; "
            "python3 -c 'import urllib.request as u; print(sorted(u.getproxies().items()))'; "
            "echo ===; cat /etc/apt/sources.list; echo ===; "
            "test -s /etc/ssl/certs/ca-certificates.crt && echo ca-ok; "
            "ps -o comm= -p 1"
        )
        result = ssh.run(client, script, timeout=60)
    finally:
        client.close()
    out = result.stdout.decode()
    print("\n" + out)
    assert result.exit_code == 0, result.stderr
    etc_env, apt_file, env, apt_dump, pyproxies, sources, tail = out.split("===\n")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        assert f"{var}={proxy}\n" in etc_env
        assert f"{var}={proxy}\n" in env  # an SSH exec session sees it
    assert "no_proxy=localhost,127.0.0.1,::1\n" in env
    assert f'Acquire::http::Proxy "{proxy}";' in apt_file
    assert f'Acquire::https::Proxy "{proxy}";' in apt_file
    assert f'Acquire::http::Proxy "{proxy}";' in apt_dump
    assert f"('https', '{proxy}')" in pyproxies  # what pip's requests asks
    assert sources == guest_sources_list("bookworm")
    assert tail.split() == ["ca-ok", "systemd"]
