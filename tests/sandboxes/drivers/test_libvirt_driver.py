"""LibvirtDriver against libvirt's test:/// driver (one private host per test). qemu-img runs
for real on files in tmp_path; nothing here boots a guest."""

from __future__ import annotations

import os
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from sandboxes.drivers.base import (
    RUNNING,
    SHUTOFF,
    DomainNotFound,
    PermanentDriverError,
    SourceNotUsable,
    TransientDriverError,
)
from sandboxes.drivers.libvirt_driver import (
    LibvirtDriver,
    backing_chain,
    qcow2_backing_file,
    remove_tree_inside,
)
from sandboxes.drivers.qemu_img import overlay_command

from .conftest import make_qcow2


@pytest.fixture
def driver(test_uri):
    d = LibvirtDriver(test_uri, domain_type="qemu")
    yield d
    d.close()


def qemu_img_info(path: str) -> str:
    return subprocess.run(
        ["qemu-img", "info", "-U", path], capture_output=True, text=True, check=True
    ).stdout


def test_it_creates_a_linked_overlay_in_a_traversable_workdir(driver, make_spec, base_image):
    spec = make_spec()
    info = driver.clone(spec)
    overlay = os.path.join(spec.workdir, "disk.qcow2")
    assert info.disks == (overlay,)
    assert os.stat(spec.workdir).st_mode & 0o777 == 0o755
    assert f"backing file: {base_image}" in qemu_img_info(overlay)
    assert qcow2_backing_file(overlay) == str(base_image)


def test_it_writes_the_real_absolute_backing_path_not_a_symlink(
    driver, make_spec, base_image, tmp_path
):
    link = tmp_path / "current.qcow2"
    link.symlink_to(base_image)
    spec = make_spec(source_disk=str(link))
    driver.clone(spec)
    assert qcow2_backing_file(os.path.join(spec.workdir, "disk.qcow2")) == str(base_image)


def test_it_defines_the_domain_with_tcg_and_tags_libvirt_keeps(driver, make_spec):
    spec = make_spec(tags={"sandbox": "s-1", "operation": 'op<&>"7'})
    driver.clone(spec)
    # A second connection to a test:///file URI would see a fresh host: reuse the driver's.
    root = ET.fromstring(driver._connection().lookupByName(spec.name).XMLDesc(0))
    assert root.get("type") == "qemu"
    assert root.find("features/tcg") is not None
    assert driver.get_domain(spec.name).tags == {"sandbox": "s-1", "operation": 'op<&>"7'}


def test_it_reports_that_test_uris_get_tcg_without_probing(test_uri):
    verdict = LibvirtDriver(test_uri).domain_type_verdict
    assert verdict.domain_type == "qemu"
    assert not verdict.probed


def test_it_refuses_a_relative_workdir(driver, make_spec):
    with pytest.raises(PermanentDriverError, match="absolute"):
        driver.clone(make_spec(workdir="relative/dir"))


def test_it_refuses_an_unreadable_source_without_leaving_anything(driver, make_spec, monkeypatch):
    spec = make_spec()
    # Root reads mode-000 files, so simulate the worker's view instead of chmod-ing.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SourceNotUsable, match="not readable"):
        driver.clone(spec)
    assert not os.path.exists(spec.workdir)


def test_it_refuses_a_source_disk_that_lives_inside_the_workdir(driver, make_spec, tmp_path):
    workdir = tmp_path / "sandboxes" / "inside"
    workdir.mkdir(parents=True)
    src = make_qcow2(workdir / "golden.qcow2")
    with pytest.raises(SourceNotUsable, match="inside the sandbox workdir"):
        driver.clone(make_spec(source_disk=str(src), workdir=str(workdir)))


def test_it_names_the_source_when_qemu_img_rejects_the_format(driver, make_spec, tmp_path):
    raw = tmp_path / "images" / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    spec = make_spec(source_disk=str(raw), source_format="qcow2")
    with pytest.raises(SourceNotUsable, match="raw.img"):
        driver.clone(spec)
    assert not os.path.exists(os.path.join(spec.workdir, "disk.qcow2"))


def test_it_removes_the_overlay_and_new_workdir_when_define_fails(driver, make_spec):
    spec = make_spec(name="bad/name")  # libvirt refuses '/' in names
    with pytest.raises(PermanentDriverError, match="bad/name"):
        driver.clone(spec)
    assert not os.path.exists(os.path.join(spec.workdir, "disk.qcow2"))
    assert not os.path.exists(spec.workdir)


def test_it_keeps_a_workdir_it_did_not_create_when_define_fails(driver, make_spec):
    spec = make_spec(name="bad/name2")
    os.makedirs(spec.workdir)
    Path(spec.workdir, "keep.txt").write_text("mine")
    with pytest.raises(PermanentDriverError):
        driver.clone(spec)
    assert sorted(os.listdir(spec.workdir)) == ["keep.txt"]


def test_it_replaces_a_stale_overlay_left_by_an_attempt_that_never_defined(driver, make_spec):
    spec = make_spec()
    os.makedirs(spec.workdir)
    Path(spec.workdir, "disk.qcow2").write_bytes(b"junk from a crashed worker")
    driver.clone(spec)
    assert qcow2_backing_file(os.path.join(spec.workdir, "disk.qcow2")) == spec.source_disk


def test_it_returns_the_domain_a_retry_already_defined_without_touching_its_overlay(
    driver, make_spec
):
    spec = make_spec()
    first = driver.clone(spec)
    overlay = os.path.join(spec.workdir, "disk.qcow2")
    before = os.stat(overlay).st_mtime_ns
    again = driver.clone(spec)
    assert again.uuid == first.uuid
    assert os.stat(overlay).st_mtime_ns == before


def test_it_serialises_concurrent_clones_of_one_name(driver, make_spec):
    spec = make_spec()
    results, errors = [], []

    def worker():
        try:
            results.append(driver.clone(spec).uuid)
        except Exception as exc:  # pragma: no cover - shows up in the assertion
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1


def test_it_finds_the_disk_of_a_shut_off_golden_domain(driver, make_spec):
    golden = make_spec()
    driver.clone(golden)
    assert driver.source_disk(golden.name) == os.path.join(golden.workdir, "disk.qcow2")


def test_it_refuses_to_clone_from_a_running_golden_domain_and_says_what_to_do(driver, make_spec):
    golden = make_spec()
    driver.clone(golden)
    driver.start(golden.name)
    with pytest.raises(SourceNotUsable) as err:
        driver.source_disk(golden.name)
    assert "shut it down" in str(err.value).lower() or "Shut it down" in str(err.value)
    assert "flattened copy" in str(err.value)


def test_it_refuses_a_golden_domain_whose_disk_file_is_gone(driver, make_spec):
    golden = make_spec()
    driver.clone(golden)
    os.unlink(os.path.join(golden.workdir, "disk.qcow2"))
    with pytest.raises(SourceNotUsable, match="does not exist"):
        driver.source_disk(golden.name)


def test_it_removes_only_the_workdir_never_the_backing_file(driver, make_spec, base_image):
    spec = make_spec()
    driver.clone(spec)
    Path(spec.workdir, "console.log").write_text("boot")
    driver.destroy(spec.name, spec.workdir)
    assert driver.get_domain(spec.name) is None
    assert not os.path.exists(spec.workdir)
    assert base_image.exists()


def test_it_keeps_a_golden_image_someone_put_inside_the_workdir(tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    golden = make_qcow2(workdir / "golden.qcow2")
    subprocess.run(overlay_command(str(golden), str(workdir / "disk.qcow2")), check=True)
    assert backing_chain(str(workdir / "disk.qcow2")) == [str(golden)]
    kept = remove_tree_inside(str(workdir))
    assert kept == [str(golden)]
    assert sorted(os.listdir(workdir)) == ["golden.qcow2"]


def test_it_deletes_symlinks_in_the_workdir_but_not_their_targets(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep")
    workdir = tmp_path / "wd"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "link-to-file").symlink_to(precious)
    (workdir / "link-to-dir").symlink_to(outside)
    (workdir / "sub" / "f").write_text("x")
    remove_tree_inside(str(workdir))
    assert not workdir.exists()
    assert precious.read_text() == "keep"


def test_it_refuses_to_delete_a_workdir_that_is_a_symlink(driver, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "wd").symlink_to(real)
    with pytest.raises(PermanentDriverError, match="symlink"):
        driver.destroy("nothing", str(tmp_path / "wd"))
    assert real.exists()


def test_it_refuses_to_delete_top_level_directories(driver):
    with pytest.raises(PermanentDriverError, match="top-level"):
        driver.destroy("nothing", "/var")


def test_it_refuses_workdirs_outside_the_configured_root(test_uri, tmp_path):
    d = LibvirtDriver(test_uri, domain_type="qemu", workdir_root=str(tmp_path / "sandboxes"))
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(PermanentDriverError, match="outside"):
        d.destroy("nothing", str(other))
    assert other.exists()


def test_it_undefines_a_domain_with_snapshots(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    dom = driver._connection().lookupByName(spec.name)
    dom.snapshotCreateXML("<domainsnapshot><name>s1</name></domainsnapshot>", 0)
    driver.destroy(spec.name, spec.workdir)
    assert driver.get_domain(spec.name) is None


def test_it_reconnects_when_the_connection_was_closed_under_it(make_spec):
    # test:///default shares its state between the connections open in this process, so a
    # reconnect finds the domain again while `anchor` keeps that state alive; hence a unique
    # name and explicit cleanup.
    anchor = libvirt.open("test:///default")
    driver = LibvirtDriver("test:///default", domain_type="qemu")
    spec = make_spec()
    try:
        driver.clone(spec)
        driver._conn.close()  # what a libvirtd restart looks like from here
        assert driver.state(spec.name) == SHUTOFF
    finally:
        driver.destroy(spec.name, spec.workdir)
        driver.close()
        anchor.close()


def test_it_maps_an_unreachable_libvirt_to_a_transient_error(tmp_path):
    d = LibvirtDriver(f"test://{tmp_path}/missing-node.xml", domain_type="qemu")
    with pytest.raises(TransientDriverError, match="cannot connect"):
        d.list_domains()


def test_it_maps_libvirt_errors_by_kind(driver):
    def err(code: int, message: str, domain: int = libvirt.VIR_FROM_QEMU) -> libvirt.libvirtError:
        e = libvirt.libvirtError(message)
        e.err = (code, domain, message, 2, None, None, None, -1, -1)
        return e

    cases = [
        (libvirt.VIR_ERR_NO_DOMAIN, "Domain not found", DomainNotFound),
        (
            libvirt.VIR_ERR_OPERATION_TIMEOUT,
            "Timed out during operation: cannot acquire state change lock",
            TransientDriverError,
        ),
        (libvirt.VIR_ERR_SYSTEM_ERROR, "cannot acquire state change lock", TransientDriverError),
        (libvirt.VIR_ERR_RPC, "End of file while reading data", TransientDriverError),
        (
            libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
            "QEMU guest agent is not connected",
            TransientDriverError,
        ),
        (libvirt.VIR_ERR_XML_ERROR, "XML error: bad", PermanentDriverError),
        (libvirt.VIR_ERR_ACCESS_DENIED, "access denied", PermanentDriverError),
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            "Cannot access storage file '/x/disk.qcow2': No such file or directory",
            PermanentDriverError,
        ),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            "Cannot access storage file '/x/disk.qcow2': Permission denied",
            PermanentDriverError,
        ),
    ]
    for code, message, kind in cases:
        mapped = driver._error(err(code, message), "start", "sbx-1")
        assert type(mapped) is kind, (message, mapped)
        assert "sbx-1" in str(mapped)
    denied = driver._error(
        err(
            libvirt.VIR_ERR_INTERNAL_ERROR,
            "Cannot access storage file '/x/disk.qcow2': Permission denied",
        ),
        "start",
        "sbx-1",
    )
    assert "/x/disk.qcow2" in str(denied) and "0755" in str(denied)


def test_it_lists_domains_with_disks_and_tags(driver, make_spec):
    a, b = make_spec(tags={"sandbox": "a"}), make_spec(tags={"sandbox": "b"})
    driver.clone(a)
    driver.clone(b)
    listed = {d.name: d for d in driver.list_domains()}
    assert listed[a.name].tags == {"sandbox": "a"}
    assert listed[b.name].disks == (os.path.join(b.workdir, "disk.qcow2"),)


def test_it_sets_the_guest_clock_of_a_running_domain(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    driver.start(spec.name)
    assert driver.state(spec.name) == RUNNING
    driver.set_guest_time(spec.name)  # the test driver accepts setTime


def test_it_answers_false_to_guest_ping_where_the_agent_api_is_missing(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    driver.start(spec.name)
    assert driver.guest_ping(spec.name) is False  # test:/// has no virDomainQemuAgentCommand
