"""The KVM probe, driven by stand-in QEMU binaries (shell scripts) so each outcome can be
shown without depending on this machine's KVM."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from sandboxes.drivers.kvm_probe import STUB_BASE64, STUB_SOURCE, KvmProbe, resolve_domain_type


def fake_qemu(tmp_path: Path, body: str, version: str = "QEMU emulator version 7.2.22") -> str:
    """A qemu-system stand-in: answers --version, otherwise runs `body` and counts runs."""
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi\n'
        f"echo run >> {tmp_path}/runs\n"
        f"{body}\n"
    )
    script.chmod(0o755)
    return str(script)


def runs(tmp_path: Path) -> int:
    f = tmp_path / "runs"
    return len(f.read_text().splitlines()) if f.exists() else 0


@pytest.fixture
def kvm_device(tmp_path: Path) -> str:
    dev = tmp_path / "kvm"
    dev.write_text("")
    dev.chmod(0o666)
    return str(dev)


def probe(tmp_path, kvm_device, body, **kw) -> KvmProbe:
    kw.setdefault("cache_path", None)
    return KvmProbe(
        qemu_binary=fake_qemu(tmp_path, body), kvm_device=kvm_device, qemu_user="root", **kw
    )


def test_it_picks_kvm_when_the_test_guest_prints_its_marker(tmp_path, kvm_device):
    verdict = probe(tmp_path, kvm_device, "echo VSB-KVM-OK; exit 3").verdict()
    assert verdict.domain_type == "kvm"
    assert verdict.probed and not verdict.fell_back


def test_it_falls_back_to_tcg_on_a_kvm_internal_error(tmp_path, kvm_device):
    body = 'echo "KVM internal error. Suberror: 1"; echo "emulation failure"; exit 1'
    verdict = probe(tmp_path, kvm_device, body).verdict()
    assert verdict.domain_type == "qemu"
    assert verdict.fell_back
    assert "KVM internal error" in verdict.reason


def test_it_falls_back_when_qemu_aborts_setting_up_the_host_cpu(tmp_path, kvm_device):
    body = "echo \"qemu: kvm.c:3183: kvm_buf_set_msrs: Assertion 'ret == n' failed.\" >&2; kill -ABRT $$"
    verdict = probe(tmp_path, kvm_device, body).verdict()
    assert verdict.domain_type == "qemu"
    assert "kvm_buf_set_msrs" in verdict.reason


def test_it_falls_back_when_the_test_guest_hangs(tmp_path, kvm_device):
    verdict = probe(tmp_path, kvm_device, "exec sleep 30", timeout=0.5).verdict()
    assert verdict.domain_type == "qemu"
    assert "did not finish within 0.5 s" in verdict.reason
    assert verdict.seconds < 5


def test_it_falls_back_without_running_qemu_when_dev_kvm_is_missing(tmp_path):
    verdict = probe(tmp_path, str(tmp_path / "no-kvm"), "echo VSB-KVM-OK").verdict()
    assert verdict.domain_type == "qemu"
    assert "does not exist" in verdict.reason
    assert runs(tmp_path) == 0


def test_it_falls_back_when_dev_kvm_cannot_be_opened(tmp_path):
    verdict = probe(tmp_path, str(tmp_path), "echo VSB-KVM-OK").verdict()  # a directory
    assert verdict.domain_type == "qemu"
    assert "cannot open" in verdict.reason


def test_it_falls_back_when_libvirts_qemu_user_cannot_open_dev_kvm(tmp_path):
    dev = tmp_path / "kvm"
    dev.write_text("")
    dev.chmod(0o600)  # root only, as on this machine
    p = KvmProbe(
        cache_path=None,
        qemu_binary=fake_qemu(tmp_path, "echo VSB-KVM-OK"),
        kvm_device=str(dev),
        qemu_user="nobody",
    )
    verdict = p.verdict()
    assert verdict.domain_type == "qemu"
    assert "'nobody'" in verdict.reason and "0600" in verdict.reason
    assert runs(tmp_path) == 0


def test_it_reads_the_qemu_user_from_qemu_conf(tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text('#user = "root"\nuser = "+64055"\n')
    assert KvmProbe(qemu_conf=str(conf)).qemu_user() == "+64055"


def test_it_probes_once_and_then_answers_from_the_cache(tmp_path, kvm_device):
    cache = tmp_path / "run" / "kvm-probe.json"
    p = probe(tmp_path, kvm_device, 'echo "KVM internal error"; exit 1', cache_path=str(cache))
    first = p.verdict()
    second = p.verdict()
    assert runs(tmp_path) == 1
    assert not first.from_cache and second.from_cache
    assert (second.domain_type, second.reason) == (first.domain_type, first.reason)
    assert json.loads(cache.read_text())["key"]["kernel"] == os.uname().release


def test_it_probes_again_after_a_qemu_upgrade(tmp_path, kvm_device):
    cache = str(tmp_path / "kvm-probe.json")
    probe(tmp_path, kvm_device, "exit 1", cache_path=cache).verdict()
    upgraded = KvmProbe(
        cache_path=cache,
        qemu_binary=fake_qemu(tmp_path, "echo VSB-KVM-OK", version="QEMU emulator version 9.0"),
        kvm_device=kvm_device,
        qemu_user="root",
    )
    assert upgraded.verdict().domain_type == "kvm"
    assert runs(tmp_path) == 2


def test_it_ignores_a_corrupt_cache_file(tmp_path, kvm_device):
    cache = tmp_path / "kvm-probe.json"
    cache.write_text("{not json")
    assert (
        probe(tmp_path, kvm_device, "echo VSB-KVM-OK", cache_path=str(cache)).verdict().domain_type
        == "kvm"
    )


def test_it_does_not_probe_when_the_type_is_set_explicitly():
    for setting in ("kvm", "qemu"):
        verdict = resolve_domain_type(setting)
        assert verdict.domain_type == setting
        assert not verdict.probed and not verdict.fell_back


def test_it_rejects_unknown_settings():
    with pytest.raises(ValueError, match="auto"):
        resolve_domain_type("xen")


def test_it_ships_the_stub_assembled_from_its_source(tmp_path):
    (tmp_path / "s.S").write_text(STUB_SOURCE)
    for cmd in (
        ["as", "--32", "-o", "s.o", "s.S"],
        ["ld", "-m", "elf_i386", "-Ttext=0x100000", "-o", "s.elf", "s.o"],
        ["objcopy", "-O", "binary", "-j", ".text", "s.elf", "s.bin"],
    ):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    assert (tmp_path / "s.bin").read_bytes() == base64.b64decode("".join(STUB_BASE64))


def test_it_ships_a_stub_that_boots_and_prints_its_marker_under_tcg(tmp_path):
    stub = tmp_path / "stub.bin"
    stub.write_bytes(base64.b64decode("".join(STUB_BASE64)))
    proc = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "32", "-nodefaults",
         "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
         "-kernel", str(stub), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "VSB-KVM-OK" in proc.stdout
    assert proc.returncode == 3


@pytest.mark.e2e
def test_it_reaches_a_verdict_about_this_machine_quickly():
    verdict = KvmProbe(cache_path=None).verdict()
    print(f"\nKVM probe: {verdict.domain_type} in {verdict.seconds:.3f} s: {verdict.reason}")
    assert verdict.domain_type in ("kvm", "qemu")
    assert verdict.reason
    assert verdict.seconds < 20


def test_it_also_boots_a_real_kernel_when_given_one_and_needs_it_to_reach_root_mount(
    tmp_path, kvm_device
):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    body = (
        'case "$*" in *panic=-1*) exec sleep 30;; esac\n'  # the kernel hangs, as seen here
        "echo VSB-KVM-OK; exit 3"
    )
    verdict = probe(tmp_path, kvm_device, body, kernel=str(kernel), timeout=1).verdict()
    assert verdict.domain_type == "qemu"
    assert "vmlinuz did not finish" in verdict.reason
    ok = 'case "$*" in *panic=-1*) echo "Kernel panic - not syncing: VFS: Unable to mount root fs";; *) echo VSB-KVM-OK;; esac'
    assert probe(tmp_path, kvm_device, ok, kernel=str(kernel)).verdict().domain_type == "kvm"
