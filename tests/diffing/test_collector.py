"""The in-guest scripts: one read-only document with every section, any file name, no
volatile paths; hashes and contents for exactly the paths asked."""

from __future__ import annotations

import hashlib
import os

import pytest

from diffing import (
    DEFAULT_EXCLUDES,
    ManifestError,
    collector_script,
    content_script,
    hash_script,
    parse,
    parse_contents,
    parse_hashes,
)
from diffing.collector import batched

ODD_NAMES = ["/etc/with space", "/etc/tab\there", "/etc/new\nline"]


def test_it_records_every_file_symlink_and_directory_with_its_metadata(guest):
    manifest = guest.collect()
    motd = manifest.files["/etc/motd"]
    stat = os.lstat(guest.root / "etc/motd")
    assert (motd.type, motd.size, motd.mode, motd.uid, motd.inode) == (
        "f",
        len("Welcome.\n"),
        0o644,
        stat.st_uid,
        stat.st_ino,
    )
    assert motd.mtime_ns == stat.st_mtime_ns
    assert motd.ctime_ns == stat.st_ctime_ns
    assert motd.user == "root" and motd.group == "root"
    assert manifest.files["/etc/motd.link"].type == "l"
    assert manifest.files["/etc/motd.link"].target == "motd"
    assert manifest.files["/srv/data"].type == "d"
    assert manifest.files["/bin"].target == "usr/bin"
    assert manifest.files["/"].type == "d"


def test_it_keeps_names_with_spaces_tabs_and_newlines_intact(guest):
    manifest = guest.collect()
    for name in ODD_NAMES:
        assert manifest.files[name].type == "f"
        assert manifest.files[name].size == 2


def test_it_never_lists_volatile_paths(guest):
    paths = set(guest.collect().files)
    for hidden in ("/var/log", "/var/cache", "/var/lib/dhcp", "/tmp", "/proc", "/root/.cache"):
        assert not any(p == hidden or p.startswith(hidden + "/") for p in paths), hidden
    assert "/home/alice/.cache" not in paths
    assert "/home/alice/notes.txt" in paths
    assert "/var/lib" in paths  # only the excluded part of /var is pruned


def test_it_honours_custom_paths_and_excludes(guest):
    manifest = guest.collect(paths=["/etc", "/opt"], excludes=["/etc/systemd"])
    assert "/opt/app/run.sh" in manifest.files and "/etc/motd" in manifest.files
    assert not any(p.startswith(("/srv", "/home", "/etc/systemd")) for p in manifest.files)


def test_it_reads_packages_units_users_and_groups(guest):
    manifest = guest.collect()
    assert manifest.packages["curl"].version == "7.88.1-10"
    assert manifest.packages["curl"].installed
    assert not manifest.packages["old"].installed  # "rc": removed, config files left
    assert manifest.units["foo.service"].wanted_by == ("multi-user.target.wants",)
    assert "bar.service" not in manifest.units or not manifest.units["bar.service"].wanted_by
    assert manifest.users["daemon"].home == "/usr/sbin"
    assert manifest.groups["adm"].members == ("daemon",)


def test_it_reads_rpm_packages_when_a_real_rpm_answers(guest):
    guest.stub(
        "rpm",
        'case "$1" in --version) echo "RPM version 4.18";; *) printf "%s\\n" '
        '"kernel\t5.14-1\tx86_64\tii " "kernel\t5.14-2\tx86_64\tii " "zsh\t1:5.8-9\tx86_64\tii ";;'
        " esac\n",
    )
    packages = guest.collect().packages
    assert packages["zsh"].version == "1:5.8-9" and packages["zsh"].manager == "rpm"
    # kernels install side by side: one key each
    assert {k for k in packages if k.startswith("kernel")} == {
        "kernel:x86_64:5.14-1",
        "kernel:x86_64:5.14-2",
    }
    assert packages["curl"].manager == "dpkg"


def test_it_writes_nothing_into_the_guest(guest):
    def state():
        return {
            str(p): (p.lstat().st_mtime_ns, p.lstat().st_ctime_ns)
            for p in [guest.root, *guest.root.rglob("*")]
        }

    before = state()
    guest.collect()
    assert state() == before


def test_it_refuses_a_document_cut_short(guest):
    out = guest.run(collector_script(root=str(guest.root)))
    assert parse(out).files
    with pytest.raises(ManifestError, match="cut short"):
        parse(out[: len(out) // 2])
    with pytest.raises(ManifestError, match="header"):
        parse(b"bash: find: command not found\n")


def test_it_drops_the_section_of_a_failing_command(guest):
    guest.dpkg_status.unlink()  # the stub's `cat` now fails
    assert guest.collect().packages is None


def test_it_can_leave_systemctl_out(guest):
    manifest = guest.collect(with_systemctl=False)
    assert not manifest.systemctl
    assert manifest.units["foo.service"].wanted_by == ("multi-user.target.wants",)


def test_it_skips_nested_start_points_on_the_same_filesystem():
    script = collector_script(paths=["/", "/var"], excludes=DEFAULT_EXCLUDES)
    assert 'stat -c %d ./var)" = "$(stat -c %d .)"' in script


def test_it_hashes_exactly_the_files_asked_for_even_with_odd_names(guest):
    asked = ["/etc/motd", *ODD_NAMES, "/etc/missing", "/srv/data"]
    hashes = parse_hashes(guest.run(hash_script(asked, root=str(guest.root))))
    assert set(hashes) == {"/etc/motd", *ODD_NAMES}
    for path, digest in hashes.items():
        assert digest == hashlib.sha256((guest.root / path[1:]).read_bytes()).hexdigest()


def test_it_fetches_small_file_contents_and_leaves_large_ones_out(guest):
    guest.write("etc/big", "x" * 100)
    guest.write("etc/blob", b"\x00\x01\xff")
    asked = ["/etc/motd", "/etc/new\nline", "/etc/big", "/etc/blob", "/etc/motd.link", "/nope"]
    contents = parse_contents(guest.run(content_script(asked, 50, root=str(guest.root))), 50)
    assert contents == {
        "/etc/motd": b"Welcome.\n",
        "/etc/new\nline": b"c\n",
        "/etc/blob": b"\x00\x01\xff",
    }


def test_it_splits_long_path_lists_into_commands_that_fit():
    paths = [f"/usr/share/doc/package-{i}/changelog.Debian.gz" for i in range(5000)]
    batches = list(batched(paths))
    assert sum(len(b) for b in batches) == len(paths) and len(batches) > 1
    assert all(len(hash_script(b)) < 120_000 for b in batches)
    assert all(len(content_script(b, 65536)) < 120_000 for b in batches)
