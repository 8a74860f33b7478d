"""Reading a hostile guest disk on the host: real ext4 images made with mke2fs -d from a tree
an attacker would plant, read by the real reader (its user, network, mount and pid
namespaces) and by the ext4 parser alone. No VM needed: the e2e ring does the same on a
real guest (tests/e2e/test_guest_boundary.py)."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest

import diffing
from sandboxes.drivers import ext4
from sandboxes.drivers import guest_reader_job as job
from sandboxes.drivers.base import PermanentDriverError, TransientDriverError
from sandboxes.drivers.guest_reader import GuestReader, ReaderConfig

HOST_SECRET = b"HOST-SECRET-7d1c0e"
DIFF_PARAMS = {
    "excludes": list(diffing.DEFAULT_EXCLUDES),
    "content_limit": 65536,
    "max_content_files": 2000,
    "hash_limit": 256 << 20,
}


def make_image(tree, path, size="64M") -> str:
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(path), size], check=True
    )
    return str(path)


def base_tree(root):
    (root / "etc" / "skel").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "skel" / ".profile").write_text("umask 022\n")
    (root / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: base-files\nStatus: install ok installed\nVersion: 12.4\nArchitecture: amd64\n\n"
    )
    return root


@pytest.fixture
def host_secret_dir():
    """A host directory holding a secret, as the SSH CA directory does (outside /tmp: the
    reader has a private /tmp of its own)."""
    secret = pathlib.Path(tempfile.mkdtemp(prefix="vsb-host-ca-", dir="/var/tmp"))
    (secret / "ca").write_bytes(HOST_SECRET)
    os.chmod(secret / "ca", 0o600)
    yield secret
    shutil.rmtree(secret)


@pytest.fixture
def images(tmp_path, host_secret_dir):
    """(before, after): after plants everything the issue lists."""
    before = make_image(base_tree(tmp_path / "before"), tmp_path / "before.img")
    after = base_tree(tmp_path / "after")
    (after / "etc" / "hostca").symlink_to(host_secret_dir)  # a directory symlink to the host
    (after / "etc" / "skel" / "x").symlink_to("/dev/zero")
    os.mknod(after / "etc" / "skel" / "tty0", 0o600 | 0o020000, os.makedev(4, 0))
    (after / "var" / "lib" / "dpkg" / "status").unlink()
    os.mkfifo(after / "var" / "lib" / "dpkg" / "status")
    with open(after / "sparse", "wb") as f:
        f.truncate(2 << 30)
    (after / "etc" / "new\nline").write_text("odd name\n")
    (after / "etc" / "app.conf").write_text("listen 8080\n")
    return before, make_image(after, tmp_path / "after.img", "128M")


@pytest.fixture
def reader():
    return GuestReader(ReaderConfig(timeout=120))


def test_it_reports_planted_entries_as_what_they_are_and_reads_nothing_of_the_host(images, reader):
    started = time.monotonic()
    diff = reader.run("diff", DIFF_PARAMS, list(images))
    assert time.monotonic() - started < 60
    added = {r["path"]: r for r in diff["files"]["added"]}
    assert added["/etc/hostca"]["type"] == "l"
    assert added["/etc/skel/x"]["type"] == "l" and added["/etc/skel/x"]["target"] == "/dev/zero"
    assert added["/etc/skel/tty0"]["type"] == "c"
    assert added["/sparse"]["type"] == "f" and added["/sparse"]["size"] == 2 << 30
    assert added["/sparse"]["unified_diff"] is None  # 2 GiB of zeros: listed, never inlined
    assert added["/etc/new\nline"]["type"] == "f"
    assert "+listen 8080" in added["/etc/app.conf"]["unified_diff"]
    modified = {r["path"]: r for r in diff["files"]["modified"]}
    assert modified["/var/lib/dpkg/status"]["type"] == "p"  # a FIFO: reported, never opened
    assert HOST_SECRET.decode() not in json.dumps(diff)


def test_the_target_state_never_follows_guest_symlinks_to_the_host(images, reader, host_secret_dir):
    before, after = images
    diff = reader.run("diff", DIFF_PARAMS, [before, after])
    # What a stale diff of another state would ask for: a "regular file" under /etc/hostca.
    diff["files"]["added"].append({"path": "/etc/hostca/ca", "type": "f"})
    state = reader.run(
        "target_state", {"diff": diff, "inline_limit": 65536, "file_limit": 1 << 20}, [after]
    )
    assert "/etc/hostca/ca" not in state["contents"]
    assert state["skel_sha256"].keys() == {".profile"}  # not x (-> /dev/zero), not tty0
    blob = json.dumps(state)
    assert HOST_SECRET.decode() not in blob and base64.b64encode(HOST_SECRET).decode() not in blob


def test_the_reader_is_nobody_on_the_host_with_no_network(images, reader, host_secret_dir):
    ca = str(host_secret_dir / "ca")
    params = {"paths": ["/etc/hostca/ca", "/etc/skel/x"], "physical": False, "host_paths": [ca]}
    answer = reader.run("probe", params, [images[1]])
    assert answer["uid"] == 0  # root of its own user namespace ...
    assert answer["host"][ca] == "Permission denied"  # ... which is nobody on the host,
    assert answer["interfaces"] == ["lo"]  # with no network,
    assert "vsb-reader /tmp tmpfs" in answer["mounts"]  # a private scratch,
    assert "fuse" not in answer["mounts"]  # and the guest filesystem never mounted
    # In-root resolution: /etc/hostca -> <host dir> is looked up inside the guest, where it
    # does not exist; /dev/zero is not a regular file of the guest either.
    assert answer["reads"]["/etc/hostca/ca"]["kind"] == "missing"
    assert answer["reads"]["/etc/skel/x"]["kind"] in ("missing", "c")


def test_a_job_that_runs_too_long_is_killed_and_reported(images):
    slow = GuestReader(ReaderConfig(timeout=2))
    started = time.monotonic()
    with pytest.raises(TransientDriverError, match="took over 2 s"):
        slow.run("probe", {"sleep_seconds": 60}, [images[0]])
    assert time.monotonic() - started < 10
    time.sleep(0.5)
    leftovers = subprocess.run(
        ["pgrep", "-f", "sleep_seconds|proc/self/fd/"], capture_output=True, text=True
    )
    assert leftovers.stdout.strip() == ""


def test_garbage_instead_of_a_filesystem_is_a_clear_error(tmp_path, reader):
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(PermanentDriverError, match="e2fsck|filesystem"):
        reader.run("diff", DIFF_PARAMS, [str(junk), str(junk)])


def test_the_parser_cuts_a_directory_cycle_and_matches_find(tmp_path):
    tree = base_tree(tmp_path / "tree")
    (tree / "d" / "sub").mkdir(parents=True)
    (tree / "d" / "sub" / "f").write_text("x")
    img = make_image(tree, tmp_path / "cycle.img")
    # A hard link to a directory's ancestor: what a crafted image can hold, never a kernel.
    subprocess.run(
        ["debugfs", "-w", "-R", "ln /d /d/sub/loop", img], check=True, capture_output=True
    )
    fd = os.open(img, os.O_RDONLY)
    try:
        fs = ext4.Ext4(fd)
        paths = [p for p, _ in fs.walk()]
        assert b"./d/sub/loop" in paths
        assert not any(p.startswith(b"./d/sub/loop/") for p in paths)
        records = diffing.parse(
            b"VSB-MANIFEST 1 b\n\n--b files\n"
            + job.file_records(job.GuestRoot(fd), [])
            + b"\n--b end\n"
        ).files
        assert records["/d/sub/f"].size == 1 and records["/etc/passwd"].type == "f"
        # Lookups never leave the root: ".." above "/" stays at "/".
        assert fs.lookup("/../../etc/passwd", follow=True).kind == "f"
        assert fs.lookup("/d/../etc/passwd", follow=False) is None
    finally:
        os.close(fd)


def test_the_dpkg_section_reads_status_like_dpkg_query():
    status = (
        b"Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\n"
        b"Package: b\nStatus: deinstall ok config-files\nVersion: 2\nArchitecture: all\n\n"
        b"Package: c\nStatus: purge ok not-installed\nArchitecture: amd64\n\n"
        b"Package: d\nStatus: hold reinstreq half-installed\nVersion: 3\nArchitecture: amd64\n"
    )
    assert job.dpkg_section(status) == b"a\t1\tamd64\tii \nb\t2\tall\trc \nd\t3\tamd64\thHR\n"
