"""The playbook generator: each kind of change becomes the task Ansible has for it, each
change is said once, and what cannot be inlined or expressed is flagged."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from playbooks import generator
from playbooks.build import write_project
from playbooks.state import DebFile, TargetState


def f(path, **kw):
    rec = {
        "path": path,
        "type": "f",
        "size": 10,
        "mode": "0644",
        "owner": "root",
        "group": "root",
        "sha256": "x",
    }
    rec.update(kw)
    return rec


DEB = b"!<arch>\n" + b"\0" * 64

DIFF = {
    "files": {
        "added": [
            f("/etc/app.conf"),
            {
                "path": "/srv/app",
                "type": "d",
                "size": 0,
                "mode": "0750",
                "owner": "dave",
                "group": "dave",
            },
            f("/srv/app/run.sh", mode="0755", owner="dave", group="dave"),
            f("/srv/app/logo.bin"),
            f("/srv/app/tmpl.j2"),
            f("/etc/systemd/system/app.service"),
            {
                "path": "/etc/systemd/system/multi-user.target.wants/app.service",
                "type": "l",
                "size": 0,
                "mode": "0777",
                "owner": "root",
                "group": "root",
                "target": "/etc/systemd/system/app.service",
            },
            {
                "path": "/home/dave",
                "type": "d",
                "size": 0,
                "mode": "0755",
                "owner": "dave",
                "group": "dave",
            },
            f("/home/dave/.bashrc", sha256="skel-bashrc"),
            f("/home/dave/notes.txt", sha256="own"),
            f("/root/vsb-hello.deb"),
            f("/usr/share/vsb-hello/hello.txt"),
            {
                "path": "/usr/share/vsb-hello",
                "type": "d",
                "size": 0,
                "mode": "0755",
                "owner": "root",
                "group": "root",
            },
            f("/var/lib/dpkg/info/vsb-hello.list"),
            {
                "path": "/usr/local/bin/app",
                "type": "l",
                "size": 0,
                "mode": "0777",
                "owner": "root",
                "group": "root",
                "target": "/srv/app/run.sh",
            },
        ],
        "modified": [
            {**f("/etc/passwd"), "changes": ["content"]},
            {**f("/etc/hosts", mode="0600"), "changes": ["mode"]},
            {**f("/usr/share/vsb-hello/edited.txt"), "changes": ["content"]},
        ],
        "removed": [
            {
                "path": "/opt/old",
                "type": "d",
                "size": 0,
                "mode": "0755",
                "owner": "root",
                "group": "root",
            },
            f("/opt/old/a"),
            f("/etc/motd"),
        ],
        "touched": [f("/var/lib/dpkg/lock")],
    },
    "packages": {
        "installed": [
            {"name": "vsb-hello", "version": "1.0", "arch": "all"},
            {"name": "jq", "version": "1.6-2.1", "arch": "amd64"},
        ],
        "removed": [{"name": "nano", "version": "7.2", "arch": "amd64"}],
        "upgraded": [],
    },
    "units": {
        "enabled": [{"name": "app.service", "wanted_by": ["multi-user.target"]}],
        "disabled": [],
        "masked": [],
        "unmasked": [],
        "changed": [],
    },
    "users": {
        "added": [
            {
                "name": "dave",
                "uid": 1001,
                "gid": 1001,
                "gecos": "Dave",
                "home": "/home/dave",
                "shell": "/bin/bash",
            }
        ],
        "removed": [],
        "changed": [],
    },
    "groups": {
        "added": [{"name": "dave", "gid": 1001, "members": []}],
        "removed": [],
        "changed": [],
    },
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
        owned={
            "vsb-hello": {
                "/usr/share/vsb-hello",
                "/usr/share/vsb-hello/hello.txt",
                "/usr/share/vsb-hello/edited.txt",
            }
        },
        shipped_md5={
            "/usr/share/vsb-hello/hello.txt": hashlib.md5(b"hello\n").hexdigest(),
            "/usr/share/vsb-hello/edited.txt": hashlib.md5(b"original\n").hexdigest(),
        },
        debs=[DebFile("/root/vsb-hello.deb", "vsb-hello", "1.0", "all")],
        skel_sha256={".bashrc": "skel-bashrc"},
        group_names={0: "root", 1001: "dave"},
    )


def tasks_of(out) -> list[dict]:
    return yaml.safe_load(out.yaml.split("---\n", 1)[1].replace("!unsafe", ""))[0]["tasks"]


def by_name(out) -> dict[str, dict]:
    return {t["name"]: t for t in tasks_of(out)}


def test_each_kind_of_change_becomes_its_module():
    out = generator.generate(DIFF, state(), title="t")
    tasks = by_name(out)
    assert tasks["Group dave"]["ansible.builtin.group"] == {
        "name": "dave",
        "gid": 1001,
        "state": "present",
    }
    user = tasks["User dave"]["ansible.builtin.user"]
    assert user["uid"] == 1001 and user["group"] == "dave" and user["create_home"] is True
    assert tasks["Write /etc/app.conf"]["ansible.builtin.copy"]["content"] == "port = 8080\n"
    run = tasks["Write /srv/app/run.sh"]["ansible.builtin.copy"]
    assert (run["mode"], run["owner"], run["group"]) == ("0755", "dave", "dave")
    assert tasks["Directory /srv/app"]["ansible.builtin.file"]["state"] == "directory"
    assert tasks["Link /usr/local/bin/app"]["ansible.builtin.file"] == {
        "path": "/usr/local/bin/app",
        "src": "/srv/app/run.sh",
        "state": "link",
        "force": True,
        "owner": "root",
    }
    assert tasks["Attributes of /etc/hosts"]["ansible.builtin.file"]["mode"] == "0600"
    assert tasks["Package vsb-hello 1.0"]["ansible.builtin.apt"] == {
        "deb": "/root/vsb-hello.deb",
        "state": "present",
    }
    assert (
        tasks["Package file vsb-hello.deb"]["ansible.builtin.copy"]["dest"] == "/root/vsb-hello.deb"
    )
    assert tasks["Packages from the repositories"]["ansible.builtin.apt"] == {
        "name": ["jq=1.6-2.1"],
        "state": "present",
        "update_cache": True,
    }
    assert tasks["Remove package nano"]["ansible.builtin.apt"]["state"] == "absent"
    assert tasks["Enable app.service"]["ansible.builtin.systemd_service"] == {
        "name": "app.service",
        "enabled": True,
        "state": "started",
    }
    assert tasks["Reload systemd units"]["ansible.builtin.systemd_service"] == {
        "daemon_reload": True
    }


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
    assert out.files[logo["src"][len("files/") :]] == b"\x89PNG\0\0binary"
    assert any("/srv/app/logo.bin: binary" in w for w in out.warnings)
    assert "# Warnings:" in out.yaml and "logo.bin" in out.yaml.split("---")[0]


def test_a_file_over_the_limit_is_flagged_not_dropped_silently():
    big = state()
    del big.contents["/etc/app.conf"]
    big.too_large["/etc/app.conf"] = 99_000_000
    out = generator.generate(DIFF, big, title="t")
    assert "Write /etc/app.conf" not in by_name(out)
    assert any("/etc/app.conf: 99000000 bytes, over the size limit" in w for w in out.warnings)


def assert_syntax_ok(tmp_path: Path, out) -> None:
    """`ansible-playbook --syntax-check` accepts the generated project."""
    path = write_project(str(tmp_path), out.yaml, out.files)
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "--syntax-check",
            "-i",
            "localhost,",
            path,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_playbook_passes_ansible_syntax_check(tmp_path: Path):
    out = generator.generate(DIFF, state(), title="syntax")
    assert_syntax_ok(tmp_path, out)


def test_only_tasks_that_need_an_earlier_change_tolerate_a_dry_run():
    tasks = by_name(generator.generate(DIFF, state(), title="t"))
    tolerant = {
        name for name, t in tasks.items() if t.get("ignore_errors") == "{{ ansible_check_mode }}"
    }
    assert {
        "User dave",
        "Write /srv/app/run.sh",
        "Directory /srv/app",
        "Package vsb-hello 1.0",
        "Enable app.service",
    } <= tolerant
    assert (
        not {
            "Write /etc/app.conf",
            "Group dave",
            "Packages from the repositories",
            "Remove /etc/motd",
        }
        & tolerant
    )


def test_a_new_tree_of_many_files_travels_as_one_archive(tmp_path: Path):
    import io
    import tarfile

    diff = {
        **DIFF,
        "files": {
            **DIFF["files"],
            "added": [
                *DIFF["files"]["added"],
                {
                    "path": "/srv/site",
                    "type": "d",
                    "size": 0,
                    "mode": "0755",
                    "owner": "dave",
                    "group": "dave",
                },
                {
                    "path": "/srv/site/img",
                    "type": "d",
                    "size": 0,
                    "mode": "0750",
                    "owner": "dave",
                    "group": "dave",
                },
                *[f(f"/srv/site/p{i}.html", owner="dave", group="dave") for i in range(15)],
                *[
                    f(f"/srv/site/img/i{i}.png", mode="0600", owner="dave", group="dave")
                    for i in range(10)
                ],
                {
                    "path": "/srv/site/index.html",
                    "type": "l",
                    "size": 0,
                    "mode": "0777",
                    "owner": "dave",
                    "group": "dave",
                    "target": "p0.html",
                },
            ],
        },
    }
    st = state()
    for i in range(15):
        st.contents[f"/srv/site/p{i}.html"] = f"<p>{i}</p>\n".encode()
    for i in range(10):
        st.contents[f"/srv/site/img/i{i}.png"] = b"\x89PNG\0" + bytes([i])
    out = generator.generate(diff, st, title="t")
    tasks = by_name(out)
    tree = tasks["Tree /srv/site (28 entries)"]["ansible.builtin.unarchive"]
    assert tree["dest"] == "/" and tree["src"].startswith("files/")
    assert not [
        n
        for n in tasks
        if n.startswith(("Write /srv/site", "Directory /srv/site", "Link /srv/site"))
    ]
    assert "Write /srv/app/run.sh" in tasks  # /srv/app has too few files: one task per file
    data = out.files[tree["src"][len("files/") :]]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert (
            members["srv/site/img/i3.png"].mode == 0o600 and members["srv/site/img"].mode == 0o750
        )
        assert (members["srv/site/p1.html"].uname, members["srv/site/p1.html"].gname) == (
            "dave",
            "dave",
        )
        assert (
            members["srv/site/index.html"].issym()
            and members["srv/site/index.html"].linkname == "p0.html"
        )
        assert tar.extractfile("srv/site/p7.html").read() == b"<p>7</p>\n"
    assert generator.generate(diff, st, title="t").files == out.files  # the same bytes every time
    assert_syntax_ok(tmp_path, out)


# --- guest data is never a template -------------------------------------------------------
# Root in the guest chooses every path, link target, account field, unit and package name the
# diff reports. Ansible templates playbook strings on the controller (the worker host), so a
# `{{ lookup('pipe', ...) }}` reaching a playbook unmarked runs there.


def jinja(marker: Path) -> str:
    return "{{ lookup('pipe', 'touch " + str(marker) + "') }}"


def hostile(tmp_path: Path) -> tuple[dict, TargetState, str]:
    """A diff whose every guest-chosen string carries Jinja that touches its own marker file
    under tmp_path (so a failure names the field), and the title/source an agent chose."""
    m = {
        name: jinja(tmp_path / f"marker-{name}")
        for name in (
            "link",
            "link-path",
            "file",
            "content",
            "dir",
            "binary",
            "owner",
            "group-field",
            "mode",
            "removed",
            "fifo",
            "tree",
            "tree-link",
            "comment",
            "home",
            "shell",
            "user",
            "group",
            "unit-enabled",
            "unit-disabled",
            "unit-masked",
            "unit-unmasked",
            "deb",
            "title",
            "source",
            "changed-user",
            "newline",
            "override",
        )
    }
    override = (
        "#jinja2:variable_start_string:'[%', variable_end_string:'%]'\n[% lookup('pipe', 'touch "
        + str(tmp_path / "marker-override")
        + "') %]"
    )
    tree = f"/srv/tree{m['tree']}"
    diff = {
        "files": {
            "added": [
                {
                    "path": f"/srv/l{m['link-path']}",
                    "type": "l",
                    "size": 0,
                    "mode": "0777",
                    "owner": "root",
                    "group": "root",
                    "target": m["link"],
                },
                f(f"/srv/f{m['file']}", owner=m["owner"], group=m["group-field"], mode=m["mode"]),
                f(f"/srv/b{m['binary']}"),
                {
                    "path": f"/srv/d{m['dir']}",
                    "type": "d",
                    "size": 0,
                    "mode": "0755",
                    "owner": "root",
                    "group": "root",
                },
                {
                    "path": f"/srv/p{m['fifo']}",
                    "type": "p",
                    "size": 0,
                    "mode": "0600",
                    "owner": "root",
                    "group": "root",
                },
                f("/srv/newline\n- hosts: all\n  tasks: [{shell: " + m["newline"] + "}]\u2028- x"),
                f("/srv/" + override),
                {
                    "path": tree,
                    "type": "d",
                    "size": 0,
                    "mode": "0755",
                    "owner": "root",
                    "group": "root",
                },
                *[f(f"{tree}/n{i}") for i in range(3)],
                {
                    "path": f"{tree}/link",
                    "type": "l",
                    "size": 0,
                    "mode": "0777",
                    "owner": "root",
                    "group": "root",
                    "target": m["tree-link"],
                },
                {
                    "path": f"/etc/systemd/system/multi-user.target.wants/{m['unit-enabled']}.service",
                    "type": "l",
                    "size": 0,
                    "mode": "0777",
                    "owner": "root",
                    "group": "root",
                    "target": "/dev/null",
                },
                f(f"/root/{m['deb']}.deb"),
            ],
            "modified": [],
            "removed": [f(f"/srv/gone{m['removed']}")],
        },
        "packages": {
            "installed": [{"name": "vsb-evil", "version": "1.0", "arch": "all"}],
            "removed": [],
            "upgraded": [],
        },
        "units": {
            "enabled": [
                {"name": f"{m['unit-enabled']}.service", "wanted_by": ["multi-user.target"]}
            ],
            "disabled": [{"name": f"{m['unit-disabled']}.service"}],
            "masked": [{"name": f"{m['unit-masked']}.service"}],
            "unmasked": [{"name": f"{m['unit-unmasked']}.service"}],
            "changed": [],
        },
        "users": {
            "added": [
                {
                    "name": "mallory",
                    "uid": 1002,
                    "gid": 1002,
                    "gecos": m["comment"],
                    "home": f"/home/x{m['home']}",
                    "shell": f"/bin/{m['shell']}",
                },
                {
                    "name": m["user"],
                    "uid": 1003,
                    "gid": 1002,
                    "gecos": "",
                    "home": "/home/u",
                    "shell": "/bin/sh",
                },
            ],
            "removed": [],
            "changed": [
                {
                    "before": {},
                    "after": {
                        "name": "eve",
                        "uid": 1004,
                        "gid": 1002,
                        "gecos": m["changed-user"],
                        "home": "/home/eve",
                        "shell": "/bin/sh",
                    },
                }
            ],
        },
        "groups": {
            "added": [
                {"name": "mallory", "gid": 1002, "members": []},
                {"name": m["group"], "gid": 1005, "members": []},
            ],
            "removed": [],
            "changed": [],
        },
        "notes": [],
        "summary": {"files": {"added": 12}},
    }
    st = TargetState(
        contents={
            f"/srv/f{m['file']}": f"x = {m['content']}\n".encode(),
            f"/srv/b{m['binary']}": b"\0binary",
            "/srv/newline\n- hosts: all\n  tasks: [{shell: "
            + m["newline"]
            + "}]\u2028- x": b"\0n",  # a warning
            "/srv/" + override: b"o\n",
            **{f"{tree}/n{i}": b"t\n" for i in range(3)},
            f"/root/{m['deb']}.deb": DEB,
        },
        debs=[DebFile(f"/root/{m['deb']}.deb", "vsb-evil", "1.0", "all")],
        group_names={0: "root"},
    )
    return diff, st, f"Reproduce {m['title']}"


def generate_hostile(tmp_path: Path, **kw):
    diff, st, title = hostile(tmp_path)
    source = f"sandbox {jinja(tmp_path / 'marker-source')}"
    return generator.generate(diff, st, title=title, source=source, archive_min_files=3, **kw)


def templated(node) -> bool:
    """What Ansible would read as a template: its start strings, or the #jinja2: override."""
    text = node.value
    return any(s in text for s in ("{{", "{%", "{#")) or text.startswith("#jinja2:")


def scalars(node):
    if isinstance(node, yaml.ScalarNode):
        yield node
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from scalars(item)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield from scalars(key)
            yield from scalars(value)


def test_every_guest_string_is_emitted_unsafe(tmp_path: Path):
    out = generate_hostile(tmp_path)
    document = yaml.compose(out.yaml.split("\n---\n", 1)[1])
    found = list(scalars(document))
    marked = [n.value for n in found if "marker-" in n.value]
    assert len(marked) > 30, marked  # the hostile fields are there...
    loose = [
        n.value for n in found if (templated(n) or "marker-" in n.value) and n.tag != "!unsafe"
    ]
    # ...and the only template left plain is the generator's own.
    assert loose == ["{{ ansible_check_mode }}"] * loose.count("{{ ansible_check_mode }}"), loose
    tasks = {t["name"]: t for t in tasks_of(out)}
    assert any(name.startswith("Link /srv/l{{") for name in tasks)
    assert any(
        t.get("ansible.builtin.file", {}).get("src") == jinja(tmp_path / "marker-link")
        for t in tasks.values()
    )


def test_ansible_templates_nothing_the_guest_wrote(tmp_path: Path):
    """Load the playbook as ansible-playbook does (its loader, playbook text trusted as
    templates) and template every string with its Templar: nothing runs, every value stays
    literally what the guest wrote."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    out = generate_hostile(tmp_path)
    project = tmp_path / "project"
    path = write_project(str(project), out.yaml, out.files)
    loader = DataLoader()
    play = loader.load_from_file(path, trusted_as_template=True)
    templar = Templar(loader=loader, variables={"ansible_check_mode": False})

    def leaves(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from leaves(v)
        elif isinstance(value, list):
            for v in value:
                yield from leaves(v)
        elif isinstance(value, str):
            yield value

    changed = [(s, templar.template(s)) for s in leaves(play) if s != "{{ ansible_check_mode }}"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("marker-")) == []
    assert [(before, after) for before, after in changed if before != after] == []
    assert sum("marker-" in s for s, _ in changed) > 30


def test_a_guest_path_cannot_write_yaml_into_the_header(tmp_path: Path):
    out = generate_hostile(tmp_path)
    header, body = out.yaml.split("\n---\n", 1)
    assert all(line.startswith("#") for line in header.splitlines()), header
    documents = list(yaml.safe_load_all(out.yaml.replace("!unsafe", "")))
    assert len(documents) == 1 and len(documents[0]) == 1  # one play, the generator's
    assert len(documents[0][0]["tasks"]) == out.task_count
    assert "\\u000a- hosts: all" in header and "\\u2028" in header


def test_names_the_target_refuses_are_warnings_not_tasks(tmp_path: Path):
    out = generate_hostile(tmp_path)
    tasks = by_name(out)
    modules = [next(k for k in t if k.startswith("ansible.builtin.")) for t in tasks.values()]
    evil_group, evil_user = jinja(tmp_path / "marker-group"), jinja(tmp_path / "marker-user")
    assert f"Group {evil_group}" not in tasks and "Group mallory" in tasks
    assert f"User {evil_user}" not in tasks
    assert any(w.startswith(f"group {evil_group!r}: groupadd refuses") for w in out.warnings), (
        out.warnings
    )
    assert any(w.startswith(f"user {evil_user!r}: useradd refuses its name") for w in out.warnings)
    # Comment, home and shell are fine for useradd: reproduced as they are.
    user = tasks["User mallory"]["ansible.builtin.user"]
    assert user["comment"] == jinja(tmp_path / "marker-comment")
    assert user["home"] == "/home/x" + jinja(tmp_path / "marker-home")
    assert user["shell"] == "/bin/" + jinja(tmp_path / "marker-shell")
    # systemctl refuses these unit names: no systemd task, the .wants link is copied as a link.
    assert "ansible.builtin.systemd_service" not in modules
    for change in ("enabled", "disabled", "masked", "unmasked"):
        name = jinja(tmp_path / f"marker-unit-{change}") + ".service"
        assert any(
            w.startswith(f"unit {name!r} ({change}): systemctl refuses") for w in out.warnings
        )
    wants = f"/etc/systemd/system/multi-user.target.wants/{jinja(tmp_path / 'marker-unit-enabled')}.service"
    assert tasks[f"Link {wants}"]["ansible.builtin.file"]["src"] == "/dev/null"


def test_a_package_name_apt_would_read_otherwise_is_not_a_task():
    diff = {
        **DIFF,
        "packages": {
            "installed": [
                {"name": "jq,openssh-server", "version": "1.6", "arch": "all"},
                {"name": "curl", "version": "8.0=x", "arch": "all"},
                {"name": "wget\n", "version": "1.21", "arch": "all"},
            ],
            "removed": [{"name": "nano,openssh-server", "version": "7.2", "arch": "amd64"}],
            "upgraded": [],
        },
    }
    out = generator.generate(diff, state(), title="t")
    assert not [t for t in tasks_of(out) if "ansible.builtin.apt" in t]
    assert sum("not a Debian package name and version" in w for w in out.warnings) == 4


def test_files_shipped_beside_the_playbook_have_plain_names_inside_files(tmp_path: Path):
    out = generate_hostile(tmp_path)
    long_name = {
        **DIFF,
        "files": {"added": [f("/srv/" + "n" * 255)], "modified": [], "removed": []},
    }
    st = state()
    st.contents["/srv/" + "n" * 255] = b"\0" * 10
    names = [*out.files, *generator.generate(long_name, st, title="t").files]
    assert len(out.files) == 4  # two binaries, the .deb, the tree's archive
    assert any(n.endswith("-" + "n" * 100) for n in names)  # cut to fit NAME_MAX
    assert all(re.fullmatch(r"[0-9a-f]{12}-[A-Za-z0-9._+-]{1,100}", n) for n in names), names
    for bad in ("../escape", "a/b", "..", "", "x\n", "{{ x }}"):
        with pytest.raises(ValueError):
            write_project(str(tmp_path / "p"), "- hosts: all\n", {bad: b"x"})
    assert not (tmp_path / "p").exists()  # refused before anything was written


def test_an_agent_chosen_title_does_not_run_in_the_syntax_check():
    """`ansible-playbook --syntax-check` templates the play's name, which carries the agent's
    own sandbox name and agent_id: generating a playbook must not run them."""
    import uuid

    from playbooks.runtime import syntax_check

    marker = Path(f"/tmp/vsb-test-title-{uuid.uuid4().hex}")
    out = generator.generate(
        DIFF, state(), title=f"Reproduce {jinja(marker)}", source=jinja(marker)
    )
    try:
        ok, output = syntax_check(out.yaml, out.files)
        assert ok, output
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
