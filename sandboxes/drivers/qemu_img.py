"""qemu-img command lines, built in one place: the overlay a clone starts from and the copy of
an overlay or one of its internal snapshots. The libvirt driver, the guest reader, the benches
and the tests all run these.
"""

from __future__ import annotations

import subprocess

from .base import TransientDriverError


def overlay_command(
    backing: str, overlay: str, *, backing_format: str = "qcow2", qemu_img: str = "qemu-img"
) -> list[str]:
    """A new qcow2 `overlay` backed by `backing`; qemu-img writes `backing` into its header
    as given, so callers pass an absolute real path."""
    return [qemu_img, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, overlay]


def convert_command(
    overlay: str,
    dest: str,
    *,
    snapshot: str | None = None,
    out_format: str = "qcow2",
    backing: str | None = None,
    backing_format: str = "qcow2",
    qemu_img: str = "qemu-img",
) -> list[str]:
    """Copy the qcow2 `overlay`, or its internal `snapshot`, to `dest` in `out_format`; with
    `backing`, `dest` is an overlay on it holding only what differs from it.
    -U: the overlay may be open in its running QEMU; an internal snapshot never changes, so
    reading it beside the live VM is safe."""
    cmd = [qemu_img, "convert", "-U", "-q", "-f", "qcow2"]
    if snapshot:
        cmd += ["-l", f"snapshot.name={snapshot}"]
    cmd += ["-O", out_format]
    if backing:
        cmd += ["-B", backing, "-F", backing_format]
    return [*cmd, overlay, dest]


def run_qemu_img(cmd: list[str], *, timeout: int, what: str) -> subprocess.CompletedProcess[str]:
    """Run a qemu-img command with its output captured. Taking longer than `timeout` seconds
    is transient (a busy disk): "<what> took over <timeout> s"."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TransientDriverError(f"{what} took over {timeout} s") from None
