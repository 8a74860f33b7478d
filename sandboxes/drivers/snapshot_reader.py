"""Read a sandbox's internal snapshot from the host, without the guest.

The snapshot is copied out of the qcow2 overlay as a sparse raw image (qemu-img convert -U:
an internal snapshot never changes, so reading it beside the running VM is safe) and
loop-mounted read-write: a snapshot of a live guest carries an uncommitted journal, which the
kernel replays on mount (read-only mounts of such a filesystem fail). It is a private copy,
so writing to it changes nothing the guest sees. No Django here."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from .base import PermanentDriverError, TransientDriverError


def _run(cmd: list[str], what: str, timeout: float = 300) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TransientDriverError(f"{what} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise PermanentDriverError(f"{what} failed: {(proc.stderr or proc.stdout).strip()}")


@contextlib.contextmanager
def mounted_snapshot(
    overlay: str, snapshot: str | None, scratch_parent: str, qemu_img: str = "qemu-img"
) -> Iterator[str]:
    """Mount point holding the guest's root filesystem as it was at `snapshot` (None: the
    disk as it is, for a stopped sandbox). Needs root
    and a loop device; the guest's filesystem must sit on the whole disk (the project's
    images) rather than in a partition."""
    scratch = tempfile.mkdtemp(prefix=".vsb-read-", dir=scratch_parent)
    raw, mnt = os.path.join(scratch, "disk.raw"), os.path.join(scratch, "root")
    os.mkdir(mnt)
    mounted = False
    try:
        pick = ["-l", f"snapshot.name={snapshot}"] if snapshot else []
        _run(
            [qemu_img, "convert", "-U", "-q", "-f", "qcow2", *pick, "-O", "raw", overlay, raw],
            f"copying snapshot {snapshot!r} out of {overlay}",
        )
        try:
            _run(
                ["mount", "-o", "loop,rw,noatime", raw, mnt], f"mounting snapshot {snapshot!r}", 60
            )
        except PermanentDriverError as exc:
            raise PermanentDriverError(
                f"{exc} (host-side reading needs the guest filesystem on the whole disk, as in "
                "the project's images, not in a partition)"
            ) from None
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", mnt], capture_output=True, timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)
