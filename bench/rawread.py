"""The raw baseline the diff and playbook benches compare against: what reading a snapshot
costs with the host kernel doing the parsing (qemu-img convert + a loop mount), the way the
service itself read guest disks before issue 11. A bench-only shortcut, on a guest the bench
made itself: the service never mounts a guest filesystem (drivers/guest_reader.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from sandboxes.drivers.qemu_img import convert_command


@contextlib.contextmanager
def kernel_mounted(overlay: str, snapshot: str, scratch_parent: str) -> Iterator[str]:
    scratch = tempfile.mkdtemp(prefix=".bench-raw-", dir=scratch_parent)
    raw, mnt = os.path.join(scratch, "disk.raw"), os.path.join(scratch, "root")
    os.mkdir(mnt)
    try:
        cmd = convert_command(overlay, raw, snapshot=snapshot, out_format="raw")
        subprocess.run(cmd, check=True)
        subprocess.run(["mount", "-o", "loop,rw,noatime", raw, mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
