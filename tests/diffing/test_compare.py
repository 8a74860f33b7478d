"""compare(): an agent's session in a fake guest yields exactly what it did, nothing else."""

from __future__ import annotations

import json
import os
import shutil
import time

from diffing import (
    Diff,
    FileEntry,
    Manifest,
    Package,
    compare,
    content_script,
    hash_script,
    parse_contents,
    parse_hashes,
    paths_needing_contents,
    paths_needing_hashes,
)
from diffing.manifest import Unit

from .conftest import PACKAGES


def act_like_an_agent(guest):
    """The changes the diff must find, plus noise in volatile places it must not."""
    root = guest.root
    time.sleep(0.01)  # timestamps must be able to move
    guest.write("root/new-file", "created\n")
    (root / "srv/www").mkdir()
    with open(root / "etc/motd", "a") as f:
        f.write("Be nice.\n")
    with open(root / "etc/tab\there", "a") as f:
        f.write("more\n")
    (root / "etc/issue.net").unlink()
    (root / "opt/app/run.sh").chmod(0o755)
    os.utime(root / "etc/hostname")
    with open(root / "etc/passwd", "a") as f:
        f.write("eve:x:1000:1000:Eve:/home/eve:/bin/sh\n")
    wants = root / "etc/systemd/system/multi-user.target.wants"
    (wants / "bar.service").symlink_to("../bar.service")
    guest.dpkg_status.write_text(PACKAGES.replace("7.88.1-10", "7.88.1-10+deb12u5"))
    # noise
    with open(root / "var/log/syslog", "a") as f:
        f.write("cron ran\n")
    guest.write("var/cache/apt/new.bin", "x")
    guest.write("tmp/agent-scratch", "x")
    guest.write("home/alice/.cache/more", "x")
    guest.write("var/lib/dhcp/dhclient.leases", "renewed\n")


def session(guest, tmp_path) -> Diff:
    """Collect, keep a copy of the before state (as a snapshot would), act, collect, then
    hash and fetch contents only where needed, in both states: the service layer's flow."""
    before = guest.collect()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(guest.root, snapshot, symlinks=True)
    act_like_an_agent(guest)
    after = guest.collect()

    need = paths_needing_hashes(before, after)
    hashes_before = parse_hashes(guest.run(hash_script(need, root=str(snapshot))))
    hashes_after = parse_hashes(guest.run(hash_script(need, root=str(guest.root))))
    before, after = before.with_hashes(hashes_before), after.with_hashes(hashes_after)

    wanted = paths_needing_contents(before, after, max_bytes=4096)
    contents_before = parse_contents(guest.run(content_script(wanted, 4096, str(snapshot))), 4096)
    contents_after = parse_contents(guest.run(content_script(wanted, 4096, str(guest.root))), 4096)
    return compare(before, after, contents_before=contents_before, contents_after=contents_after)


def paths(records):
    return [r["path"] for r in records]


def test_it_reports_exactly_what_the_agent_changed(guest, tmp_path):
    diff = session(guest, tmp_path)
    files = diff.files
    assert paths(files["added"]) == [
        "/etc/systemd/system/multi-user.target.wants/bar.service",
        "/root/new-file",
        "/srv/www",
    ]
    assert [r["type"] for r in files["added"]] == ["l", "f", "d"]
    assert paths(files["removed"]) == ["/etc/issue.net"]
    assert {r["path"]: r["changes"] for r in files["modified"]} == {
        "/etc/motd": ["content"],
        "/etc/passwd": ["content"],
        "/etc/tab\there": ["content"],
        "/opt/app/run.sh": ["mode"],
    }
    assert paths(files["touched"]) == ["/etc/hostname"]
    assert diff.packages == {
        "installed": [],
        "removed": [],
        "upgraded": [
            {
                "name": "curl",
                "old_version": "7.88.1-10",
                "new_version": "7.88.1-10+deb12u5",
                "arch": "amd64",
            }
        ],
    }
    assert diff.units["enabled"] == [
        {"name": "bar.service", "wanted_by": ["multi-user.target.wants"]}
    ]
    assert diff.units["disabled"] == diff.units["masked"] == diff.units["changed"] == []
    assert paths_of_users(diff) == ["eve"]
    assert diff.users["removed"] == diff.users["changed"] == []
    assert diff.groups == {"added": [], "removed": [], "changed": []}
    assert diff.summary["files"] == {"added": 3, "removed": 1, "modified": 4, "touched": 1}
    assert json.loads(json.dumps(diff.to_dict()))["summary"] == diff.summary


def paths_of_users(diff):
    return [u["name"] for u in diff.users["added"]]


def test_it_shows_a_unified_diff_and_hashes_for_changed_text(guest, tmp_path):
    diff = session(guest, tmp_path)
    motd = next(r for r in diff.files["modified"] if r["path"] == "/etc/motd")
    assert motd["unified_diff"] == (
        "--- a/etc/motd\n+++ b/etc/motd\n@@ -1 +1,2 @@\n Welcome.\n+Be nice.\n"
    )
    assert motd["binary"] is False
    assert (
        motd["sha256"] and motd["before"]["sha256"] and motd["sha256"] != motd["before"]["sha256"]
    )
    new = next(r for r in diff.files["added"] if r["path"] == "/root/new-file")
    assert new["unified_diff"].endswith("+created\n") and new["sha256"]
    gone = diff.files["removed"][0]
    assert "-Debian GNU/Linux 12" in gone["unified_diff"]
    chmod = next(r for r in diff.files["modified"] if r["path"] == "/opt/app/run.sh")
    assert (chmod["before"]["mode"], chmod["mode"]) == ("0644", "0755")
    assert chmod["unified_diff"] is None  # content did not change


def test_it_hashes_only_what_changed(guest, tmp_path):
    before = guest.collect()
    act_like_an_agent(guest)
    after = guest.collect()
    assert paths_needing_hashes(before, after) == [
        "/etc/hostname",
        "/etc/motd",
        "/etc/passwd",
        "/etc/tab\there",
        "/opt/app/run.sh",
        "/root/new-file",
    ]


def test_it_reports_nothing_when_nothing_changed(guest):
    first, second = guest.collect(), guest.collect()
    diff = compare(first, second)
    assert diff.empty, diff.to_dict()


def test_it_calls_a_touched_file_modified_when_there_is_no_evidence(guest):
    before = guest.collect()
    time.sleep(0.01)
    os.utime(guest.root / "etc/hostname")
    diff = compare(before, guest.collect())
    assert [(r["path"], r["changes"]) for r in diff.files["modified"]] == [
        ("/etc/hostname", ["metadata"])
    ]
    assert diff.files["touched"] == []


# -- synthetic manifests ---------------------------------------------------------------------


def entry(path, kind="f", size=1, mtime=1, mode=0o644, target="") -> FileEntry:
    return FileEntry(path, kind, size, mtime, mtime, 7, mode, 0, 0, "root", "root", target)


def manifest(files=(), packages=None, units=(), systemctl=False) -> Manifest:
    return Manifest(
        files={f.path: f for f in files},
        packages=packages,
        units={u.name: u for u in units},
        users={},
        groups={},
        systemctl=systemctl,
    )


def pkg(name, version, status="ii ") -> Package:
    return Package(name, version, "amd64", status, "dpkg")


def test_it_counts_only_installed_packages():
    before = manifest(packages={"a": pkg("a", "1"), "b": pkg("b", "1"), "c": pkg("c", "1", "rc ")})
    after = manifest(packages={"a": pkg("a", "1", "rc "), "c": pkg("c", "1"), "d": pkg("d", "2")})
    diff = compare(before, after)
    assert [p["name"] for p in diff.packages["installed"]] == ["c", "d"]
    assert [p["name"] for p in diff.packages["removed"]] == ["a", "b"]


def test_it_notes_packages_it_could_not_compare():
    diff = compare(manifest(packages={}), manifest(packages=None))
    assert diff.packages["removed"] == []
    assert any("packages not compared" in n for n in diff.notes)


def test_it_ignores_directory_timestamps_but_not_their_mode():
    before = manifest([entry("/a", "d", 4096, 1), entry("/b", "d", 4096, 1)])
    after = manifest([entry("/a", "d", 8192, 2), entry("/b", "d", 4096, 2, mode=0o700)])
    diff = compare(before, after)
    assert diff.files["touched"] == []
    assert [(r["path"], r["changes"]) for r in diff.files["modified"]] == [("/b", ["mode"])]


def test_it_reports_retargeted_symlinks_and_type_changes():
    before = manifest([entry("/l", "l", 1, target="a"), entry("/x", "f")])
    after = manifest([entry("/l", "l", 1, 2, target="b"), entry("/x", "l", 1, 2, mode=0o777)])
    changes = {r["path"]: r["changes"] for r in compare(before, after).files["modified"]}
    assert changes == {"/l": ["target"], "/x": ["type", "mode"]}


def test_it_reports_masks_and_systemctl_only_changes():
    before = manifest(
        units=[Unit("a.service", state="enabled"), Unit("b.service", state="static")],
        systemctl=True,
    )
    after = manifest(
        units=[
            Unit("a.service", masked=True, state="masked"),
            Unit("b.service", state="static"),
            Unit("c.service", state="disabled"),
        ],
        systemctl=True,
    )
    units = compare(before, after).units
    assert units["masked"] == [{"name": "a.service"}]
    assert units["changed"] == [{"name": "c.service", "before": None, "after": "disabled"}]


def test_it_marks_binary_files_and_skips_their_diff():
    before, after = manifest([entry("/bin/x", size=3)]), manifest([entry("/bin/x", size=4)])
    diff = compare(
        before,
        after,
        contents_before={"/bin/x": b"\x7fE\x00"},
        contents_after={"/bin/x": b"\x7fE\x00\x01"},
    )
    rec = diff.files["modified"][0]
    assert rec["binary"] is True and rec["unified_diff"] is None


def test_it_marks_a_missing_final_newline_like_git():
    before, after = manifest([entry("/t", size=1)]), manifest([entry("/t", size=3)])
    diff = compare(before, after, contents_before={"/t": b"a"}, contents_after={"/t": b"a\nb"})
    assert diff.files["modified"][0]["unified_diff"] == (
        "--- a/t\n+++ b/t\n@@ -1 +1,2 @@\n-a\n\\ No newline at end of file\n+a\n+b\n"
        "\\ No newline at end of file\n"
    )


def test_owner_names_come_from_the_guests_accounts_not_the_readers():
    from dataclasses import replace

    from diffing.manifest import Group, User

    # Read host-side, find printed the host's name for uid 1000; the guest calls it appuser.
    new = FileEntry(
        "/srv/www/index.html", "f", 5, 2, 2, 9, 0o644, 1000, 1000, "hostuser", "hostgroup", ""
    )
    after = replace(
        manifest(files=[new]),
        users={"appuser": User("appuser", 1000, 1000, "", "/home/appuser", "/bin/bash")},
        groups={"appuser": Group("appuser", 1000, ())},
    )
    record = compare(manifest(), after).files["added"][0]
    assert (record["owner"], record["group"]) == ("appuser", "appuser")
