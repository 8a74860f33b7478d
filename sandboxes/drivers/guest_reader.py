"""Read a sandbox's disk from the host without trusting it: copy a snapshot out, then let an
unprivileged, network-less process read the copy in userspace. No Django here.

The host kernel never mounts a guest filesystem. `qemu-img convert -U` copies the snapshot out
of the qcow2 overlay as a private raw image (qemu-img parses only the qcow2 metadata, which
QEMU on the host wrote; the guest controls the bytes inside, not the container). Everything
that parses those bytes runs in `guest_reader_job.py`, started here as:

  launcher (root, single-threaded, forks)
    └─ child: a new user namespace whose ids 0..65535 map to an unused range on the host
       (uid_base..uid_base+65535): root inside, nobody outside; no_new_privs; memory limit
       └─ unshare --mount --net --pid --fork --kill-child --mount-proc
          └─ python3 <job zipapp> (PID 1 of its own pid namespace)
               e2fsck -E journal_only   replays the journal in userspace, on the private copy
               fuse2fs -o ro            serves the filesystem to the job through FUSE
               find / safe opens        the manifest, hashes and contents

The images and the job's code reach it as inherited file descriptors, so it needs no access
to the host's directories; no network interface but a down loopback; its mounts live and die
with its namespaces (when the job ends or is killed, the kernel tears them down: nothing to
unmount on the host, no loop device). Inside, every path is resolved under the guest root
(openat2 RESOLVE_IN_ROOT or RESOLVE_NO_SYMLINKS), only regular files are opened, with
O_NONBLOCK, on a nodev mount, and every read is capped. See docs/threat-model.md.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import diffing

from .base import PermanentDriverError, TransientDriverError
from .qemu_img import convert_command, run_qemu_img

_PACKAGE = pathlib.Path(__file__).resolve().parent.parent  # sandboxes/

# The launcher runs as root in a fresh, single-threaded interpreter (never fork a threaded
# Celery worker): fork; the child enters a new user namespace and waits; the parent writes
# the child's id maps (only a privileged parent may map a whole range) and lets it go on.
_LAUNCHER = r"""
import ctypes, os, resource, signal, sys
CLONE_NEWUSER, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 0x10000000, 1, 38
libc = ctypes.CDLL(None, use_errno=True)
base, count, mem = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cmd = sys.argv[4:]
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(ready_r); os.close(go_w)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if libc.unshare(CLONE_NEWUSER) != 0:
        sys.stderr.write("guest reader: cannot create a user namespace: %s\n" % os.strerror(ctypes.get_errno()))
        os._exit(125)
    os.write(ready_w, b"u")
    if os.read(go_r, 1) != b"g":
        os._exit(125)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if mem:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    os.execvp(cmd[0], cmd)
os.close(ready_w); os.close(go_r)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, f: os.kill(pid, signal.SIGKILL))
if os.read(ready_r, 1) == b"u":
    for name in ("uid_map", "gid_map"):
        with open("/proc/%d/%s" % (pid, name), "w") as f:
            f.write("0 %d %d\n" % (base, count))
    os.write(go_w, b"g")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


@dataclass(frozen=True)
class ReaderConfig:
    """How the reader runs. `uid_base` must be a host uid range nobody else uses."""

    python: str = "/usr/bin/python3"
    uid_base: int = 2_000_000_000
    uid_count: int = 65536
    timeout: float = 600.0
    output_limit: int = 768 << 20
    memory_limit: int = 4 << 30
    e2fsck: str = "e2fsck"
    qemu_img: str = "qemu-img"


@functools.lru_cache(maxsize=1)
def _job_zip() -> bytes:
    """The job's code as a zipapp: guest_reader_job.py as __main__ plus the diffing package
    (stdlib only). It travels as a file descriptor, like the images."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.write(_PACKAGE / "drivers" / "guest_reader_job.py", "__main__.py")
        zf.write(_PACKAGE / "drivers" / "ext4.py", "ext4.py")
        for src in sorted(pathlib.Path(diffing.__file__).parent.glob("*.py")):
            zf.write(src, f"diffing/{src.name}")
    return buf.getvalue()


class GuestReader:
    """Runs read jobs on private raw copies of a guest's disk (see the module docstring)."""

    def __init__(self, config: ReaderConfig | None = None):
        self.config = config or ReaderConfig()

    # -- copies -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot_copies(
        self, overlay: str, picks: list[str | None], scratch_parent: str
    ) -> Iterator[list[str]]:
        """Private raw copies of the overlay at each snapshot of `picks` (None: the disk as it
        is, for a stopped sandbox), removed afterwards; a removal that keeps failing is an
        error, not a leak."""
        scratch = tempfile.mkdtemp(prefix=".vsb-read-", dir=scratch_parent)
        try:
            copies = []
            for i, pick in enumerate(picks):
                raw = os.path.join(scratch, f"state{i}.raw")
                self._copy_out(overlay, pick, raw)
                copies.append(raw)
            yield copies
        finally:
            _remove_tree(scratch)

    def _copy_out(self, overlay: str, snapshot: str | None, raw: str) -> None:
        cmd = convert_command(
            overlay, raw, snapshot=snapshot, out_format="raw", qemu_img=self.config.qemu_img
        )
        proc = run_qemu_img(cmd, timeout=300, what=f"copying snapshot {snapshot!r} out")
        if proc.returncode != 0:
            raise PermanentDriverError(
                f"copying snapshot {snapshot!r} out of {overlay} failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        os.chmod(raw, 0o600)

    # -- jobs ------------------------------------------------------------------------------

    def run(self, job: str, params: dict, images: list[str]) -> dict:
        """Run `job` (see guest_reader_job.JOBS) over `images`, private copies it may change
        (their journals are replayed), and return its JSON answer.
        PermanentDriverError names what failed (with the job's last words);
        TransientDriverError when it ran out of time."""
        cfg = self.config
        fds: list[int] = []
        try:
            code_fd = _memfd("vsb-reader-job", _job_zip())
            fds.append(code_fd)
            for image in images:
                fd = os.open(image, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                fds.append(fd)
                # A private copy, handed to the reader's namespace root: e2fsck replays its
                # journal in place (the job reopens it through /proc/self/fd).
                os.fchown(fd, cfg.uid_base, cfg.uid_base)
            request = json.dumps({"job": job, "params": params, "image_fds": fds[1:]}).encode()
            cmd = [
                cfg.python,
                "-I",
                "-S",
                "-c",
                _LAUNCHER,
                str(cfg.uid_base),
                str(cfg.uid_count),
                str(cfg.memory_limit),
                "unshare",
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--",
                cfg.python,
                "-I",
                "-S",
                f"/proc/self/fd/{code_fd}",
            ]
            env = {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL": "C.UTF-8",
                "VSB_E2FSCK": cfg.e2fsck,
            }
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=fds,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        finally:
            for fd in fds:
                os.close(fd)
        out, err = _communicate_capped(proc, request, cfg.timeout, cfg.output_limit)
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip()[-800:]
            raise PermanentDriverError(
                f"reading the guest disk ({job}) failed (exit {proc.returncode}): {tail}"
            )
        try:
            return json.loads(out)
        except ValueError:
            raise PermanentDriverError(
                f"reading the guest disk ({job}) returned no answer"
            ) from None


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)  # close-on-exec: only pass_fds hands it on
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _communicate_capped(
    proc: subprocess.Popen, request: bytes, timeout: float, limit: int
) -> tuple[bytes, bytes]:
    """Send the request, read stdout up to `limit` bytes and stderr's tail, kill the whole
    process group past `timeout` or `limit`."""
    chunks: list[bytes] = []
    err_tail = bytearray()
    size = 0
    failure: list[str] = []

    def pump_err() -> None:
        for block in iter(lambda: proc.stderr.read(4096), b""):
            err_tail.extend(block)
            del err_tail[:-8192]

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(request)
            proc.stdin.close()

    threads = [
        threading.Thread(target=pump_err, daemon=True),
        threading.Thread(target=feed, daemon=True),
    ]
    for t in threads:
        t.start()
    timer = threading.Timer(timeout, lambda: (failure.append("timeout"), _kill(proc)))
    timer.start()
    try:
        for block in iter(lambda: proc.stdout.read(1 << 20), b""):
            size += len(block)
            if size > limit:
                failure.append("limit")
                _kill(proc)
                break
            chunks.append(block)
        proc.wait()
    finally:
        timer.cancel()
        for t in threads:
            t.join(timeout=5)
    if "timeout" in failure:
        raise TransientDriverError(f"reading the guest disk took over {timeout:.0f} s; stopped")
    if "limit" in failure:
        raise PermanentDriverError(f"reading the guest disk produced over {limit} bytes; stopped")
    return b"".join(chunks), bytes(err_tail)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _remove_tree(path: str, attempts: int = 5) -> None:
    """Remove a scratch directory, retrying (a job killed a moment ago may still hold a
    file); raise if it stays, so the leak is reported instead of piling up."""
    last: OSError | None = None
    for i in range(attempts):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            last = exc
            time.sleep(0.2 * (i + 1))
    raise PermanentDriverError(f"could not remove the scratch copy {path}: {last}")
