"""The playbook generator: each kind of change becomes the task Ansible has for it, each
change is said once, and what cannot be inlined or expressed is flagged."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from sandboxes.playbooks import generator
from sandboxes.playbooks.build import write_project
from sandboxes.playbooks.state import DebFile, TargetState


def f(path, **kw):
    rec = {"path": path, "type": "f", "size": 10, "mode": "0644", "owner": "root", "group": "root", "sha256": "x"}
    rec.update(kw)
    return rec


DEB = b"!<arch>\n" + b"\0" * 64

DIFF = {
    "files": {
        "added": [
            f("/etc/app.conf"),
            {"path": "/srv/app", "type": "d", "size": 0, "mode": "0750", "owner": "dave", "group": "dave"},
            f("/srv/app/run.sh", mode="0755", owner="dave", group="dave"),
            f("/srv/app/logo.bin"),
            f("/srv/app/tmpl.j2"),
            f("/etc/systemd/system/app.service"),
            {"path": "/etc/systemd/system/multi-user.target.wants/app.service", "type": "l", "size": 0,
             "mode": "0777", "owner": "root", "group": "root", "target": "/etc/systemd/system/app.service"},
            {"path": "/home/dave", "type": "d", "size": 0, "mode": "0755", "owner": "dave", "group": "dave"},
            f("/home/dave/.bashrc", sha256="skel-bashrc"),
            f("/home/dave/notes.txt", sha256="own"),
            f("/root/vsb-hello.deb"),
            f("/usr/share/vsb-hello/hello.txt"),
            {"path": "/usr/share/vsb-hello", "type": "d", "size": 0, "mode": "0755", "owner": "root", "group": "root"},
            f("/var/lib/dpkg/info/vsb-hello.list"),
            {"path": "/usr/local/bin/app", "type": "l", "size": 0, "mode": "0777", "owner": "root",
             "group": "root", "target": "/srv/app/run.sh"},
        ],
        "modified": [
            {**f("/etc/passwd"), "changes": ["content"]},
            {**f("/etc/hosts", mode="0600"), "changes": ["mode"]},
            {**f("/usr/share/vsb-hello/edited.txt"), "changes": ["content"]},
        ],
        "removed": [
            {"path": "/opt/old", "type": "d", "size": 0, "mode": "0755", "owner": "root", "group": "root"},
            f("/opt/old/a"),
            f("/etc/motd"),
        ],
        "touched": [f("/var/lib/dpkg/lock")],
    },
    "packages": {"installed": [{"name": "vsb-hello", "version": "1.0", "arch": "all"},
                               {"name": "jq", "version": "1.6-2.1", "arch": "amd64"}],
                 "removed": [{"name": "nano", "version": "7.2", "arch": "amd64"}], "upgraded": []},
    "units": {"enabled": [{"name": "app.service", "wanted_by": ["multi-user.target"]}], "disabled": [],
              "masked": [], "unmasked": [], "changed": []},
    "users": {"added": [{"name": "dave", "uid": 1001, "gid": 1001, "gecos": "Dave", "home": "/home/dave",
                         "shell": "/bin/bash"}], "removed": [], "changed": []},
    "groups": {"added": [{"name": "dave", "gid": 1001, "members": []}], "removed": [], "changed": []},
    "notes": [],
    "summary": {"files": {"added": 15}},
}


def state() -> TargetState:
    edited = b"changed by the agent\n"
    return TargetState(
        contents={
            "/etc/app.conf": b"port = 8080\n",
            "/srv/app/run.sh": b"#!/bin/sh\nexec python3 -m http.server 8080\n",
            "/srv/app/logo.bin": b"\x89PNG\0\0binary",
            "/srv/app/tmpl.j2": b"name = {{ not_a_variable }}\n",
            "/etc/systemd/system/app.service": b"[Service]\nExecStart=/srv/app/run.sh\n",
            "/home/dave/.bashrc": b"# skel\n",
            "/home/dave/notes.txt": b"mine\n",
            "/root/vsb-hello.deb": DEB,
            "/usr/share/vsb-hello/hello.txt": b"hello\n",
            "/usr/share/vsb-hello/edited.txt": edited,
            "/etc/passwd": b"root:x:0:0::/root:/bin/bash\n",
            "/etc/hosts": b"127.0.0.1 localhost\n",
        },
        owned={"vsb-hello": {"/usr/share/vsb-hello", "/usr/share/vsb-hello/hello.txt",
                             "/usr/share/vsb-hello/edited.txt"}},
        shipped_md5={"/usr/share/vsb-hello/hello.txt": hashlib.md5(b"hello\n").hexdigest(),
                     "/usr/share/vsb-hello/edited.txt": hashlib.md5(b"original\n").hexdigest()},
        debs=[DebFile("/root/vsb-hello.deb", "vsb-hello", "1.0", "all")],
        skel_sha256={".bashrc": "skel-bashrc"},
        group_names={0: "root", 1001: "dave"},
    )


def tasks_of(out) -> list[dict]:
    return yaml.safe_load(out.yaml.split("---\n", 1)[1].replace("!unsafe", "")) [0]["tasks"]


def by_name(out) -> dict[str, dict]:
    return {t["name"]: t for t in tasks_of(out)}


def test_each_kind_of_change_becomes_its_module():
    out = generator.generate(DIFF, state(), title="t")
    tasks = by_name(out)
    assert tasks["Group dave"]["ansible.builtin.group"] == {"name": "dave", "gid": 1001, "state": "present"}
    user = tasks["User dave"]["ansible.builtin.user"]
    assert user["uid"] == 1001 and user["group"] == "dave" and user["create_home"] is True
    assert tasks["Write /etc/app.conf"]["ansible.builtin.copy"]["content"] == "port = 8080\n"
    run = tasks["Write /srv/app/run.sh"]["ansible.builtin.copy"]
    assert (run["mode"], run["owner"], run["group"]) == ("0755", "dave", "dave")
    assert tasks["Directory /srv/app"]["ansible.builtin.file"]["state"] == "directory"
    assert tasks["Link /usr/local/bin/app"]["ansible.builtin.file"] == {
        "path": "/usr/local/bin/app", "src": "/srv/app/run.sh", "state": "link", "force": True, "owner": "root"}
    assert tasks["Attributes of /etc/hosts"]["ansible.builtin.file"]["mode"] == "0600"
    assert tasks["Package vsb-hello 1.0"]["ansible.builtin.apt"] == {"deb": "/root/vsb-hello.deb", "state": "present"}
    assert tasks["Package file vsb-hello.deb"]["ansible.builtin.copy"]["dest"] == "/root/vsb-hello.deb"
    assert tasks["Package jq 1.6-2.1"]["ansible.builtin.apt"] == {"name": "jq=1.6-2.1", "state": "present"}
    assert tasks["Remove package nano"]["ansible.builtin.apt"]["state"] == "absent"
    assert tasks["Enable app.service"]["ansible.builtin.systemd_service"] == {
        "name": "app.service", "enabled": True, "state": "started"}
    assert tasks["Reload systemd units"]["ansible.builtin.systemd_service"] == {"daemon_reload": True}


def test_each_change_is_said_once():
    out = generator.generate(DIFF, state(), title="t")
    names = set(by_name(out))
    skipped = {s["path"]: s["reason"] for s in out.skipped}
    assert "/etc/passwd" in skipped and "Update /etc/passwd" not in names
    assert skipped["/etc/systemd/system/multi-user.target.wants/app.service"].startswith("systemd")
    assert skipped["/home/dave/.bashrc"] == "user task (copy of /etc/skel)"
    assert "Write /home/dave/notes.txt" in names  # the agent's own file in the new home
    assert skipped["/usr/share/vsb-hello/hello.txt"] == "package vsb-hello (as shipped)"
    assert "Update /usr/share/vsb-hello/edited.txt" in names  # edited after the package shipped it
    assert skipped["/var/lib/dpkg/info/vsb-hello.list"] == "written by dpkg/apt/systemd"
    assert "Write /root/vsb-hello.deb" not in names
    assert "Remove /opt/old" in names and "Remove /opt/old/a" not in names
    assert "Remove /etc/motd" in names


def test_templates_are_not_evaluated_and_binaries_are_shipped_as_files():
    out = generator.generate(DIFF, state(), title="t")
    assert "!unsafe |" in out.yaml and "{{ not_a_variable }}" in out.yaml
    logo = by_name(out)["Write /srv/app/logo.bin"]["ansible.builtin.copy"]
    assert logo["src"].startswith("files/") and "content" not in logo
    assert out.files[logo["src"][len("files/"):]] == b"\x89PNG\0\0binary"
    assert any("/srv/app/logo.bin: binary" in w for w in out.warnings)
    assert "# Warnings:" in out.yaml and "logo.bin" in out.yaml.split("---")[0]


def test_a_file_over_the_limit_is_flagged_not_dropped_silently():
    big = state()
    del big.contents["/etc/app.conf"]
    big.too_large["/etc/app.conf"] = 99_000_000
    out = generator.generate(DIFF, big, title="t")
    assert "Write /etc/app.conf" not in by_name(out)
    assert any("/etc/app.conf: 99000000 bytes, over the size limit" in w for w in out.warnings)


def test_the_playbook_passes_ansible_syntax_check(tmp_path: Path):
    out = generator.generate(DIFF, state(), title="syntax")
    path = write_project(str(tmp_path), out.yaml, out.files)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i", "localhost,", path],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_only_tasks_that_need_an_earlier_change_tolerate_a_dry_run():
    tasks = by_name(generator.generate(DIFF, state(), title="t"))
    tolerant = {name for name, t in tasks.items() if t.get("ignore_errors") == "{{ ansible_check_mode }}"}
    assert {"User dave", "Write /srv/app/run.sh", "Directory /srv/app", "Package vsb-hello 1.0",
            "Enable app.service"} <= tolerant
    assert not {"Write /etc/app.conf", "Group dave", "Package jq 1.6-2.1", "Remove /etc/motd"} & tolerant


def test_a_new_tree_of_many_files_travels_as_one_archive(tmp_path: Path):
    import io
    import tarfile

    diff = {**DIFF, "files": {**DIFF["files"], "added": [
        *DIFF["files"]["added"],
        {"path": "/srv/site", "type": "d", "size": 0, "mode": "0755", "owner": "dave", "group": "dave"},
        {"path": "/srv/site/img", "type": "d", "size": 0, "mode": "0750", "owner": "dave", "group": "dave"},
        *[f(f"/srv/site/p{i}.html", owner="dave", group="dave") for i in range(15)],
        *[f(f"/srv/site/img/i{i}.png", mode="0600", owner="dave", group="dave") for i in range(10)],
        {"path": "/srv/site/index.html", "type": "l", "size": 0, "mode": "0777", "owner": "dave",
         "group": "dave", "target": "p0.html"},
    ]}}
    st = state()
    for i in range(15):
        st.contents[f"/srv/site/p{i}.html"] = f"<p>{i}</p>\n".encode()
    for i in range(10):
        st.contents[f"/srv/site/img/i{i}.png"] = b"\x89PNG\0" + bytes([i])
    out = generator.generate(diff, st, title="t")
    tasks = by_name(out)
    tree = tasks["Tree /srv/site (28 entries)"]["ansible.builtin.unarchive"]
    assert tree["dest"] == "/" and tree["src"].startswith("files/")
    assert not [n for n in tasks if n.startswith(("Write /srv/site", "Directory /srv/site", "Link /srv/site"))]
    assert "Write /srv/app/run.sh" in tasks  # /srv/app has too few files: one task per file
    data = out.files[tree["src"][len("files/"):]]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["srv/site/img/i3.png"].mode == 0o600 and members["srv/site/img"].mode == 0o750
        assert (members["srv/site/p1.html"].uname, members["srv/site/p1.html"].gname) == ("dave", "dave")
        assert members["srv/site/index.html"].issym() and members["srv/site/index.html"].linkname == "p0.html"
        assert tar.extractfile("srv/site/p7.html").read() == b"<p>7</p>\n"
    assert generator.generate(diff, st, title="t").files == out.files  # the same bytes every time
    path = write_project(str(tmp_path), out.yaml, out.files)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check", "-i", "localhost,", path],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
