"""What a host's worker reports in its heartbeat (sandboxes/worker.py `measure`,
sandboxes/capacity.py): its memory from /proc/meminfo, CPUs, the free disk of the sandbox
directory, and its own guests' use from one call for every domain's stats."""

from __future__ import annotations

import os

import pytest

from sandboxes import capacity, services, worker
from sandboxes.drivers.base import DomainStats, TransientDriverError
from sandboxes.drivers.fake import FAKE_QEMU_OVERHEAD_KIB

MEMINFO = """\
MemTotal:       24576000 kB
MemFree:         1024000 kB
MemAvailable:   16384000 kB
Buffers:          204800 kB
Cached:          8192000 kB
SwapTotal:             0 kB
HugePages_Total:       0
"""


def test_it_reads_total_and_available_memory_from_meminfo():
    assert capacity.parse_meminfo(MEMINFO) == {
        "memory_total_mb": 24000,
        "memory_available_mb": 16000,
    }


def test_an_old_kernel_without_memavailable_gets_free_plus_buffers_and_cache():
    old = "\n".join(line for line in MEMINFO.splitlines() if "MemAvailable" not in line)
    assert (
        capacity.parse_meminfo(old)["memory_available_mb"] == (1024000 + 204800 + 8192000) // 1024
    )


def test_meminfo_without_a_total_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="MemTotal"):
        capacity.parse_meminfo("MemFree: 10 kB\n")


def test_host_figures_read_the_given_meminfo_cpus_and_the_sandbox_dirs_filesystem(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    not_yet_made = tmp_path / "sandboxes" / "deeper"
    figures = capacity.host_figures(str(not_yet_made), meminfo=str(meminfo))
    usage = os.statvfs(tmp_path)
    assert figures["memory_total_mb"] == 24000
    assert figures["cpus"] == os.cpu_count()
    assert figures["disk_total_mb"] == usage.f_blocks * usage.f_frsize // 2**20
    assert abs(figures["disk_free_mb"] - usage.f_bavail * usage.f_frsize // 2**20) < 64


def test_guest_figures_count_only_this_hosts_running_domains():
    stats = [
        DomainStats("sbx-mine1", True, 262144, 314572),
        DomainStats("sbx-mine2", True, 524288, 600000),
        DomainStats("sbx-mine3", False, 262144, 0),  # stopped
        DomainStats("sbx-theirs", True, 1048576, 1100000),  # another host's, same libvirtd
    ]
    figures = capacity.guest_figures(stats, ["sbx-mine1", "sbx-mine2", "sbx-mine3"])
    assert figures == {"running": 2, "memory_mb": 768, "rss_mb": (314572 + 600000) // 1024}


@pytest.mark.django_db
def test_a_beat_stores_the_measured_figures_on_the_host_row(
    host, source, driver, django_user_model, sent_tasks, settings, tmp_path
):
    from sandboxes.drivers.base import CloneSpec

    owner = django_user_model.objects.create_user("hana")
    op = services.create_sandbox(owner, source_vm_name="debian-base", memory_mb=512)
    name = op.sandbox.name
    driver.clone(CloneSpec(name, source.disk_path, str(tmp_path / name), memory_mb=512))
    driver.start(name)
    driver.add_domain("sbx-not-ours", state="RUNNING")  # another install's: not counted
    settings.VSB = {**settings.VSB, "SANDBOX_DIR": str(tmp_path)}
    worker.beat(host, "qemu")
    host.refresh_from_db()
    assert host.domain_type == "qemu"
    assert host.resources["guests"] == {
        "running": 1,
        "memory_mb": 512,
        "rss_mb": 512 + FAKE_QEMU_OVERHEAD_KIB // 1024,
    }
    assert host.resources["cpus"] == os.cpu_count()
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    assert host.resources["memory_total_mb"] == total_kib // 1024
    assert 0 < host.resources["disk_free_mb"] <= host.resources["disk_total_mb"]


@pytest.mark.django_db
def test_a_beat_without_libvirt_still_says_alive_and_reports_the_rest(host, driver, settings):
    driver.fail_next("domain_stats", TransientDriverError("libvirtd restarting"))
    before = host.last_heartbeat
    worker.beat(host)
    host.refresh_from_db()
    assert host.last_heartbeat > before
    assert "guests" not in host.resources
    assert host.resources["memory_total_mb"] > 0
