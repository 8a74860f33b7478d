"""The guest's firstboot script, run for real under `sh` against a temporary root (VSB_ROOT):
`vsb.proxy=` on the kernel cmdline becomes the proxy variables in /etc/environment and apt's
proxy setting; a bad or missing one removes both. Only the proxy part is exercised: the host key
exists beforehand (no ssh-keygen) and there is no /sys (no resize)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

FIRSTBOOT = Path(__file__).resolve().parents[2] / "scripts/guest/rootfs/usr/local/lib/vsb/firstboot"
PROXY = "http://10.0.2.100:3128"
APT_FILE = "etc/apt/apt.conf.d/80vsb-proxy"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for d in ("proc", "dev", "etc/ssh", "etc/apt/apt.conf.d"):
        (tmp_path / d).mkdir(parents=True)
    key = tmp_path / "etc/ssh/ssh_host_ed25519_key"
    key.write_text("not a real key\n")
    (tmp_path / "etc/ssh/ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAtest root@x\n")
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "dev/ttyS0").write_text("")  # the console line lands here
    return tmp_path


def boot(root: Path, cmdline: str) -> str:
    """Run firstboot with this kernel cmdline; its stderr (warnings)."""
    (root / "proc/cmdline").write_text(cmdline + "\n")
    done = subprocess.run(
        ["sh", str(FIRSTBOOT)],
        env={"VSB_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def environment(root: Path) -> list[str]:
    return (root / "etc/environment").read_text().splitlines()


def test_a_proxy_on_the_cmdline_is_written_for_the_shell_and_for_apt(root: Path):
    (root / "etc/environment").write_text(
        'LANG=C.UTF-8\nhttp_proxy=http://stale.example:1\nEDITOR="vi"\n'
    )
    assert boot(root, f"root=/dev/vda rw vsb.proxy={PROXY}") == ""
    assert environment(root) == [
        "LANG=C.UTF-8",
        'EDITOR="vi"',
        f"http_proxy={PROXY}",
        f"https_proxy={PROXY}",
        f"HTTP_PROXY={PROXY}",
        f"HTTPS_PROXY={PROXY}",
        "no_proxy=localhost,127.0.0.1,::1",
        "NO_PROXY=localhost,127.0.0.1,::1",
    ]
    apt = (root / APT_FILE).read_text()
    assert f'Acquire::http::Proxy "{PROXY}";' in apt
    assert f'Acquire::https::Proxy "{PROXY}";' in apt


def test_booting_again_with_the_same_proxy_touches_nothing(root: Path):
    boot(root, f"vsb.proxy={PROXY}")
    for rel in ("etc/environment", APT_FILE):
        os.utime(root / rel, (1_000_000, 1_000_000))
    boot(root, f"vsb.proxy={PROXY}")
    assert (root / "etc/environment").stat().st_mtime == 1_000_000
    assert (root / APT_FILE).stat().st_mtime == 1_000_000
    assert environment(root).count(f"http_proxy={PROXY}") == 1


def test_a_boot_without_a_proxy_removes_both_and_keeps_other_lines(root: Path):
    (root / "etc/environment").write_text("LANG=C.UTF-8\n")
    boot(root, f"vsb.proxy={PROXY}")
    boot(root, "root=/dev/vda rw")
    assert environment(root) == ["LANG=C.UTF-8"]
    assert not (root / APT_FILE).exists()


def test_a_boot_without_a_proxy_creates_no_environment_file(root: Path):
    boot(root, "root=/dev/vda rw")
    assert not (root / "etc/environment").exists()
    assert not (root / APT_FILE).exists()


@pytest.mark.parametrize(
    "bad",
    [
        "https://10.0.2.100:3128",
        "http://proxy.example:3128",
        "http://10.0.2.100",
        "http://10.0.2.100:",
        "http://10.0.2.100:0",
        "http://10.0.2.100:65536",
        "http://10.0.2.100:03128",
        "http://10.0.2.100:3128/",
        "http://10.0.2.256:3128",
        "http://10.0.2:3128",
        "http://10.0.2.100.1:3128",
        "http://10.0.02.100:3128",
        "http://10..2.100:3128",
        "http://user@10.0.2.100:3128",
        "http://[::1]:3128",
        'http://10.0.2.100:3128";',
        "http://10.0.2.100:3128$(reboot)",
        "http://10.0.2.100:3128\\nAPT::x",
        "",
    ],
)
def test_a_bad_proxy_is_ignored_with_a_warning_and_removes_the_settings(root: Path, bad: str):
    boot(root, f"vsb.proxy={PROXY}")
    stderr = boot(root, f"root=/dev/vda vsb.proxy={bad}")
    assert "ignoring a bad vsb.proxy" in stderr
    assert environment(root) == []
    assert not (root / APT_FILE).exists()


@pytest.mark.parametrize(
    "good", ["http://10.0.2.100:3128", "http://0.0.0.0:1", "http://255.255.255.255:65535"]
)
def test_edge_values_of_a_good_proxy_are_accepted(root: Path, good: str):
    assert boot(root, f"vsb.proxy={good}") == ""
    assert f"https_proxy={good}" in environment(root)
