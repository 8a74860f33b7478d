"""A fake guest root in tmp_path, scanned by the real scripts under dash and busybox sh.

The scripts resolve every path under `root`, so nothing here reads the host's own /.
A stub `dpkg-query` first on PATH plays the package database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from diffing import Manifest, collector_script, parse

SHELLS = {
    "dash": ["/bin/sh", "-c"],
    "busybox": ["busybox", "sh", "-c"],
}

PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
GROUP = "root:x:0:\ndaemon:x:1:\nadm:x:4:daemon\n"
UNIT = "[Unit]\nDescription={name}\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
PACKAGES = "bash\t5.2.15-2+b2\tamd64\tii \ncurl\t7.88.1-10\tamd64\tii \nold\t1.0\tall\trc \n"


@dataclass
class Guest:
    """A fake guest: `root` is its /, `run` executes a script there with the chosen shell."""

    root: Path
    shell: list[str]
    dpkg_status: Path
    stubs: Path  # first on PATH: put fake guest commands here
    env: dict[str, str]

    def run(self, script: str) -> bytes:
        done = subprocess.run(
            [*self.shell, script], env=self.env, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout

    def collect(self, **kwargs) -> Manifest:
        return parse(self.run(collector_script(root=str(self.root), **kwargs)))

    def stub(self, name: str, script: str) -> None:
        path = self.stubs / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)

    def write(self, rel: str, text: str | bytes, mode: int = 0o644) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        path.chmod(mode)
        return path


def build_root(root: Path) -> None:
    def write(rel: str, text: str, mode: int = 0o644) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    write("etc/passwd", PASSWD)
    write("etc/group", GROUP)
    write("etc/motd", "Welcome.\n")
    write("etc/hostname", "sandbox\n")
    write("etc/issue.net", "Debian GNU/Linux 12\n")
    write("etc/with space", "a\n")
    write("etc/tab\there", "b\n")
    write("etc/new\nline", "c\n")
    write("opt/app/run.sh", "#!/bin/sh\necho hi\n")
    write("etc/systemd/system/foo.service", UNIT.format(name="foo"))
    write("etc/systemd/system/bar.service", UNIT.format(name="bar"))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "foo.service").symlink_to("../foo.service")
    (root / "etc/motd.link").symlink_to("motd")
    (root / "srv/data").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    # Volatile places: whatever happens here must never show up.
    for rel in (
        "var/log/syslog",
        "var/cache/apt/pkgcache.bin",
        "var/lib/dhcp/dhclient.leases",
        "tmp/scratch",
        "proc/1/status",
        "root/.cache/pip/x",
        "home/alice/.cache/thumb",
    ):
        write(rel, "volatile\n")
    write("home/alice/notes.txt", "keep\n")


@pytest.fixture(params=sorted(SHELLS))
def guest(request, tmp_path) -> Guest:
    # scripts/install-system.sh installs both shells (dash, busybox-static).
    assert shutil.which(SHELLS[request.param][0]), f"{request.param} is not installed"
    root = tmp_path / "root"
    root.mkdir()
    build_root(root)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    status = tmp_path / "dpkg-status"
    status.write_text(PACKAGES)
    stub = stubs / "dpkg-query"
    stub.write_text(f"#!/bin/sh\ncat '{status}'\n")
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    return Guest(root=root, shell=SHELLS[request.param], dpkg_status=status, stubs=stubs, env=env)
