"""File operations over real SFTP (a loopback sshd) behind the path policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import http_status
from sandboxes.remote.ssh import SSHTarget, connect
from terminals.files import (
    FileConflict,
    FileError,
    FileMissing,
    FileTooLarge,
    GuestFiles,
    PathDenied,
    PathPolicy,
)
from tests.support import hostile_sftp
from tests.support.sshd import start_sshd
from tests.terminals.conftest import GUEST_PRINCIPAL


@pytest.fixture
def files(sftp_guest, tmp_path):
    allowed = tmp_path / "work"
    allowed.mkdir()
    (tmp_path / "secret").write_text("top secret\n")
    client = connect(
        SSHTarget(sftp_guest.host, sftp_guest.port, pinned_host_key=sftp_guest.host_key_line),
        sftp_guest.ca.issue([sftp_guest.principal], ttl_seconds=60),
    )
    sftp = client.open_sftp()
    policy = PathPolicy.from_lists([str(allowed)], [str(allowed / "private")])
    yield GuestFiles(sftp, policy, max_read=1000, max_write=2000, max_transfer=4 * 1024 * 1024)
    sftp.close()
    client.close()


def test_it_round_trips_binary_bytes_exactly(files, tmp_path):
    blob = os.urandom(3 * 1024 * 1024 + 17)
    result = files.upload(str(tmp_path / "work" / "blob.bin"), blob, mode="0600")
    assert result["bytes_written"] == len(blob) and result["created"] and result["mode"] == "0600"
    data, meta = files.download(str(tmp_path / "work" / "blob.bin"))
    assert data == blob and meta["size"] == len(blob)
    with pytest.raises(FileTooLarge):
        files.upload(str(tmp_path / "work" / "big.bin"), b"x" * (4 * 1024 * 1024 + 1))


def test_it_writes_reads_and_edits_with_a_unified_diff(files, tmp_path):
    path = str(tmp_path / "work" / "conf" / "app.ini")
    with pytest.raises(FileMissing):
        files.write_text(path, "x")
    files.write_text(path, "[app]\nport = 80\nhost = a\n", create_dirs=True)
    read = files.read_text(path)
    assert read["content"] == "[app]\nport = 80\nhost = a\n" and read["total_lines"] == 3
    assert files.read_text(path, from_line=2, max_lines=1)["content"] == "port = 80\n"
    edit = files.edit(path, "port = 80", "port = 8080")
    assert edit["replacements"] == 1
    assert "-port = 80\n+port = 8080\n" in edit["diff"] and edit["diff"].startswith("--- a")
    assert (tmp_path / "work" / "conf" / "app.ini").read_text() == "[app]\nport = 8080\nhost = a\n"
    with pytest.raises(FileError, match="not found"):
        files.edit(path, "nope", "x")
    files.write_text(path, "a\na\n")
    with pytest.raises(FileConflict, match="2 times"):
        files.edit(path, "a", "b")
    assert files.edit(path, "a", "b", replace_all=True)["replacements"] == 2
    with pytest.raises(FileConflict):
        files.write_text(path, "again", overwrite=False)


def test_it_lists_stats_and_deletes(files, tmp_path):
    work = tmp_path / "work"
    (work / "d").mkdir()
    (work / "d" / "f").write_text("1")
    listing = files.list(str(work))
    assert [(e["name"], e["type"]) for e in listing["entries"]] == [("d", "directory")]
    assert files.stat(str(work / "d" / "f"))["size"] == 1
    with pytest.raises(FileConflict, match="non-empty"):
        files.delete(str(work / "d"))
    assert files.delete(str(work / "d"), recursive=True)["was_dir"] is True
    assert not (work / "d").exists()
    with pytest.raises(FileMissing):
        files.stat(str(work / "d"))


def test_it_refuses_dot_dot_escapes(files, tmp_path):
    escape = str(tmp_path / "work" / ".." / "secret")
    with pytest.raises(PathDenied):
        files.read_text(escape)
    with pytest.raises(PathDenied):
        files.write_text(escape, "owned")
    assert (tmp_path / "secret").read_text() == "top secret\n"
    with pytest.raises(FileError, match="absolute"):
        files.read_text("work/x")


def test_it_refuses_symlink_escapes_after_resolving_them_in_the_guest(files, tmp_path):
    work = tmp_path / "work"
    os.symlink(tmp_path / "secret", work / "link")
    os.symlink(tmp_path, work / "dirlink")
    os.symlink(tmp_path / "nowhere", work / "dangling")
    for action in (
        lambda: files.read_text(str(work / "link")),
        lambda: files.write_text(str(work / "link"), "owned"),
        lambda: files.download(str(work / "dirlink" / "secret")),
        lambda: files.upload(str(work / "dirlink" / "new"), b"x"),
        lambda: files.write_text(str(work / "dangling"), "x"),
        lambda: files.edit(str(work / "link"), "top", "bottom"),
    ):
        with pytest.raises(PathDenied):
            action()
    assert (tmp_path / "secret").read_text() == "top secret\n"
    assert not (tmp_path / "new").exists() and not (tmp_path / "nowhere").exists()
    # Deleting a link removes the link itself, which lives inside the allowed directory.
    assert files.delete(str(work / "link"))["deleted"]
    assert (tmp_path / "secret").exists()


def test_it_refuses_the_deny_list_and_big_reads(files, tmp_path):
    with pytest.raises(PathDenied, match="denied"):
        files.write_text(str(tmp_path / "work" / "private" / "x"), "x", create_dirs=True)
    (tmp_path / "work" / "big.txt").write_text("x" * 1001)
    with pytest.raises(FileTooLarge):
        files.read_text(str(tmp_path / "work" / "big.txt"))


def test_the_policy_compares_whole_path_components():
    policy = PathPolicy.from_lists(["/srv/app"], ["/srv/app/secrets"])
    policy.check("/srv/app")
    policy.check("/srv/app/x/y")
    for bad in ("/srv/apple", "/srv", "/srv/app/secrets", "/srv/app/secrets/k"):
        with pytest.raises(PathDenied):
            policy.check(bad)
    assert policy.normalise("//srv/./app/../app/x") == "/srv/app/x"


# --- what a hostile guest can hand back ------------------------------------------------------


@pytest.fixture(scope="module")
def endless_guest(tmp_path_factory):
    """An sshd whose sftp subsystem is a hostile server: its directory listings never end."""
    base = tmp_path_factory.mktemp("endless-guest")
    count = base / "sent"
    server = f"{sys.executable} {Path(hostile_sftp.__file__)} {count}"
    sshd = start_sshd(base, GUEST_PRINCIPAL, extra_config=[f"Subsystem sftp {server}"])
    try:
        yield sshd, count
    finally:
        sshd.stop()


def test_a_listing_that_never_ends_is_read_only_up_to_the_cap(endless_guest):
    sshd, count = endless_guest
    client = connect(
        SSHTarget(sshd.host, sshd.port, pinned_host_key=sshd.host_key_line),
        sshd.ca.issue([sshd.principal], ttl_seconds=60),
    )
    try:
        files = GuestFiles(client.open_sftp(), PathPolicy(), max_entries=10)
        listing = files.list("/anywhere")
    finally:
        client.close()
    assert int(count.read_text()) <= 1000, "the host stopped reading soon after the cap"
    assert [e["name"] for e in listing["entries"]] == [f"entry-{n:09d}" for n in range(10)]
    assert listing["truncated"] is True


def test_names_that_are_not_utf8_are_refused_with_a_4xx_not_a_crash(files, tmp_path):
    work = tmp_path / "work"
    os.mkdir(os.path.join(bytes(work), b"caf\xe9"))
    os.symlink(os.path.join(bytes(work), b"caf\xe9"), bytes(work / "link"))
    for action in (lambda: files.list(str(work)), lambda: files.stat(str(work / "link"))):
        with pytest.raises(FileError) as refused:
            action()
        assert http_status(refused.value) == 422 and "UTF-8" in refused.value.message


def test_a_tree_deeper_than_the_python_stack_is_deleted(files, tmp_path):
    deep = tmp_path / "work" / "deep"
    subprocess.run(["mkdir", "-p", str(deep) + "/d" * 1500], check=True)  # os.makedirs recurses
    (deep / "d" / "f").write_text("x")
    try:
        assert files.delete(str(deep), recursive=True)["was_dir"] is True
        assert not deep.exists()
    finally:
        subprocess.run(["rm", "-rf", str(deep)], check=True)  # pytest's own cleanup recurses


def test_a_listing_never_follows_a_guest_symlink_and_shows_it_as_one(files, tmp_path):
    work = tmp_path / "work"
    os.symlink("/etc", work / "etc-link")
    os.mkfifo(work / "fifo")
    entries = {e["name"]: e["type"] for e in files.list(str(work))["entries"]}
    assert entries == {"etc-link": "symlink", "fifo": "other"}
    with pytest.raises(FileError, match="not a regular file"):
        files.read_text(str(work / "fifo"))
