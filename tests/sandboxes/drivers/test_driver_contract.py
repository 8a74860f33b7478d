"""The same behavioural checks against FakeDriver and LibvirtDriver(test:///), so the fake the
service tests rely on cannot drift from the real driver."""

from __future__ import annotations

import pytest

from sandboxes.drivers.base import (
    PAUSED,
    RUNNING,
    SHUTOFF,
    DomainNotFound,
    PermanentDriverError,
    SnapshotNotFound,
    SourceNotUsable,
    TransientDriverError,
)
from sandboxes.drivers.fake import FakeDriver
from sandboxes.drivers.libvirt_driver import LibvirtDriver


@pytest.fixture(params=["fake", "libvirt-test"])
def driver(request, test_uri):
    if request.param == "fake":
        yield FakeDriver()
        return
    d = LibvirtDriver(test_uri, domain_type="qemu")
    yield d
    d.close()


def test_it_clones_a_shut_off_domain_carrying_its_tags(driver, make_spec):
    spec = make_spec(tags={"sandbox": "s-1", "operation": "o-9"})
    info = driver.clone(spec)
    assert (info.name, info.state, info.tags) == (
        spec.name,
        SHUTOFF,
        {"sandbox": "s-1", "operation": "o-9"},
    )
    assert info.persistent
    assert info.disks == (f"{spec.workdir}/disk.qcow2",)
    assert driver.get_domain(spec.name) == info
    assert spec.name in [d.name for d in driver.list_domains()]


def test_it_returns_the_existing_domain_when_a_clone_is_retried_with_the_same_tags(
    driver, make_spec
):
    spec = make_spec()
    first = driver.clone(spec)
    assert driver.clone(spec).uuid == first.uuid


def test_it_refuses_to_adopt_a_domain_with_the_same_name_but_other_tags(driver, make_spec):
    spec = make_spec(tags={"sandbox": "a"})
    driver.clone(spec)
    with pytest.raises(PermanentDriverError, match="already exists"):
        driver.clone(make_spec(name=spec.name, tags={"sandbox": "b"}))


def test_it_refuses_a_missing_source_disk_and_defines_nothing(driver, make_spec, tmp_path):
    spec = make_spec(source_disk=str(tmp_path / "nope.qcow2"))
    with pytest.raises(SourceNotUsable, match="nope.qcow2"):
        driver.clone(spec)
    assert driver.get_domain(spec.name) is None


def test_it_rejects_invalid_specs_before_defining(driver, make_spec):
    spec = make_spec(mac="not-a-mac")
    with pytest.raises(ValueError):
        driver.clone(spec)
    assert driver.get_domain(spec.name) is None


def test_it_starts_and_shuts_down_and_both_are_idempotent(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    driver.start(spec.name)
    driver.start(spec.name)
    assert driver.state(spec.name) == RUNNING
    driver.shutdown(spec.name, timeout=5)
    assert driver.state(spec.name) == SHUTOFF
    driver.shutdown(spec.name, timeout=5)
    assert driver.state(spec.name) == SHUTOFF


def test_it_pauses_and_resumes_and_both_are_idempotent(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    with pytest.raises(PermanentDriverError, match="cannot pause"):
        driver.suspend(spec.name)
    driver.start(spec.name)
    driver.suspend(spec.name)
    driver.suspend(spec.name)
    assert driver.state(spec.name) == PAUSED
    driver.resume(spec.name)
    driver.resume(spec.name)
    assert driver.state(spec.name) == RUNNING


def test_it_hibernates_into_a_managed_save_and_start_restores_from_it(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    driver.start(spec.name)
    driver.suspend(spec.name)  # the sweep hibernates paused sandboxes
    driver.managed_save(spec.name)
    driver.managed_save(spec.name)
    info = driver.get_domain(spec.name)
    assert (info.state, info.managed_save) == (SHUTOFF, True)
    driver.start(spec.name)
    info = driver.get_domain(spec.name)
    assert (info.state, info.managed_save) == (RUNNING, False)


def test_it_drops_a_managed_save_image_and_destroys_a_hibernated_domain(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    driver.start(spec.name)
    driver.managed_save(spec.name)
    driver.managed_save_remove(spec.name)
    driver.managed_save_remove(spec.name)
    assert not driver.get_domain(spec.name).managed_save
    driver.start(spec.name)
    driver.managed_save(spec.name)
    driver.destroy(spec.name)
    assert driver.get_domain(spec.name) is None


def test_it_destroys_a_running_domain_and_treats_a_missing_one_as_done(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    driver.start(spec.name)
    driver.destroy(spec.name, spec.workdir)
    assert driver.get_domain(spec.name) is None
    driver.destroy(spec.name, spec.workdir)
    driver.destroy("never-existed")


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.state("ghost"),
        lambda d: d.start("ghost"),
        lambda d: d.shutdown("ghost", 1),
        lambda d: d.source_disk("ghost"),
        lambda d: d.interface_addresses("ghost", "agent"),
        lambda d: d.guest_ping("ghost"),
        lambda d: d.set_guest_time("ghost"),
    ],
    ids=[
        "state",
        "start",
        "shutdown",
        "source_disk",
        "interface_addresses",
        "guest_ping",
        "set_guest_time",
    ],
)
def test_it_raises_domain_not_found_for_unknown_names(driver, call):
    with pytest.raises(DomainNotFound, match="ghost"):
        call(driver)
    assert driver.get_domain("ghost") is None


def test_it_uses_a_shut_off_domain_disk_as_a_source_but_not_a_running_one(driver, make_spec):
    golden = make_spec()
    driver.clone(golden)
    assert driver.source_disk(golden.name) == f"{golden.workdir}/disk.qcow2"
    driver.start(golden.name)
    with pytest.raises(SourceNotUsable, match="running"):
        driver.source_disk(golden.name)


def test_it_knows_no_addresses_and_no_agent_while_a_domain_is_off(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    for source in ("lease", "agent", "arp"):
        assert driver.interface_addresses(spec.name, source) == []
    assert driver.guest_ping(spec.name) is False


def test_it_rejects_an_unknown_address_source(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    with pytest.raises(ValueError, match="address source"):
        driver.interface_addresses(spec.name, "dns")


def test_it_cannot_set_the_clock_of_a_shut_off_guest(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    with pytest.raises(PermanentDriverError, match="not running"):
        driver.set_guest_time(spec.name)


# ---- fake-only: the failure hooks service tests use -----------------------------------------


def test_it_lets_a_test_inject_a_failure_into_the_next_call(make_spec):
    fake = FakeDriver()
    spec = make_spec()
    fake.fail_next("clone", TransientDriverError("libvirtd restarting"))
    with pytest.raises(TransientDriverError):
        fake.clone(spec)
    assert fake.get_domain(spec.name) is None
    assert fake.clone(spec).name == spec.name


def test_it_refuses_to_inject_into_a_method_that_does_not_exist():
    with pytest.raises(AttributeError):
        FakeDriver().fail_next("clnoe", TransientDriverError("x"))


def test_it_simulates_guests_that_ignore_acpi_and_agents_that_come_up_late(make_spec):
    fake = FakeDriver()
    spec = make_spec()
    fake.clone(spec)
    fake.start(spec.name)
    fake.set_agent(spec.name, False)
    assert fake.guest_ping(spec.name) is False
    with pytest.raises(TransientDriverError):
        fake.set_guest_time(spec.name)
    fake.set_agent(spec.name, True)
    fake.set_addresses(spec.name, "agent", ["10.0.2.15"])
    assert fake.interface_addresses(spec.name, "agent") == ["10.0.2.15"]
    fake.set_ignores_acpi(spec.name)
    fake.shutdown(spec.name, timeout=1)
    assert fake.domains[spec.name].forced_off == 1


def test_it_accepts_registered_source_paths_that_do_not_exist_on_disk():
    from sandboxes.drivers.base import CloneSpec

    fake = FakeDriver()
    fake.add_source_disk("/images/base.qcow2")
    info = fake.clone(CloneSpec(name="s", source_disk="/images/base.qcow2", workdir="/srv/s"))
    assert info.disks == ("/srv/s/disk.qcow2",)


def test_it_takes_lists_reverts_and_deletes_snapshots(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    driver.start(spec.name)
    first = driver.snapshot_create(spec.name, "base", "before the agent")
    assert first.name == "base" and first.state == RUNNING and first.has_memory
    assert driver.snapshot_create(spec.name, "base") == first  # a retried task
    driver.shutdown(spec.name, timeout=1)
    off = driver.snapshot_create(spec.name, "off")
    assert off.state == SHUTOFF and not off.has_memory
    assert [s.name for s in driver.snapshot_list(spec.name)] == ["base", "off"]
    assert driver.snapshot_revert(spec.name, "base") == RUNNING
    assert driver.snapshot_revert(spec.name, "off") == SHUTOFF
    driver.snapshot_delete(spec.name, "base")
    driver.snapshot_delete(spec.name, "base")  # missing is success
    assert [s.name for s in driver.snapshot_list(spec.name)] == ["off"]


def test_it_refuses_to_revert_to_an_unknown_snapshot(driver, make_spec):
    spec = make_spec()
    driver.clone(spec)
    with pytest.raises(SnapshotNotFound):
        driver.snapshot_revert(spec.name, "nope")


def test_its_domain_stats_say_which_domains_run_in_one_call(driver, make_spec):
    # (libvirt's test:/// driver has no balloon stats: the memory figures are the fake's and
    # a real QEMU's; test_heartbeat.py and the integration ring check those.)
    spec = make_spec()
    driver.clone(spec)
    stats = {s.name: s for s in driver.domain_stats()}
    assert stats[spec.name].running is False and stats[spec.name].rss_kib == 0
    driver.start(spec.name)
    assert {s.name: s for s in driver.domain_stats()}[spec.name].running is True
