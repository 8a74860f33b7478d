"""Turn a diff (diffing.compare) and facts about its `to` state into an Ansible
playbook: declarative tasks where Ansible has a module for the change, a `shell` task with
`creates` (listed as a warning) where it has not.

What a task of its own already covers is left out of the file tasks, so the playbook says
each change once: files a package installed (unless the agent edited them after), the
account files of users and groups, a new user's copy of /etc/skel, and the symlinks
`systemctl enable` makes. Pure: no Django, no I/O.

Every string the guest or the agent chose (paths, link targets, names, comments, homes,
shells, versions, the title) is emitted as `!unsafe`, so Ansible never templates it on the
controller: the YAML dumper tags every `str` that way unless the generator itself marked it
as one of its own words (`_Word`) or its one template (`_Template`). A new field that forgets
to say what it is fails closed, not open. See docs/playbooks.md "Guest data is never a
template"."""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import yaml

from .state import TargetState

INLINE_LIMIT = 64 * 1024
# A new directory holding at least this many new files is shipped as one tar archive
# (`unarchive`) instead of one task per file: a thousand copy tasks take a thousand round trips.
ARCHIVE_MIN_FILES = 20

ACCOUNT_FILES = {
    f"/etc/{name}{suffix}"
    for name in ("passwd", "shadow", "group", "gshadow", "subuid", "subgid")
    for suffix in ("", "-")
}
# Written as a side effect of other tasks (dpkg, apt, ldconfig, systemctl), never by hand.
SIDE_EFFECT_PREFIXES = (
    "/var/lib/dpkg/",
    "/var/lib/apt/",
    "/var/lib/ucf/",
    "/var/lib/systemd/deb-systemd-helper-enabled/",
    "/var/lib/systemd/deb-systemd-user-helper-enabled/",
    "/var/cache/",
    "/etc/ld.so.cache",
    "/usr/share/info/dir",
    "/etc/.pwd.lock",
)
WANTS_RE = re.compile(r"^/etc/systemd/(system|user)/[^/]+\.(wants|requires)/")

# What the target's tools accept; a name outside these is not reproduced by a task (it would
# fail there) but said in the warnings. shadow's useradd/groupadd (Debian 12):
ACCOUNT_NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,30}\$?$")
# Debian policy 5.6.1 and 5.6.12:
PACKAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,200}$")
PACKAGE_VERSION_RE = re.compile(r"^[A-Za-z0-9.+~:-]{1,200}$")
# systemd.unit(5): name, optional @instance, a known type.
UNIT_NAME_RE = re.compile(
    r"^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?"
    r"\.(service|socket|device|mount|automount|swap|target|path|timer|slice|scope)$"
)


@dataclass
class Generated:
    yaml: str
    files: dict[str, bytes] = field(default_factory=dict)  # name under files/ -> bytes
    warnings: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {path, reason}: covered elsewhere
    task_count: int = 0


class _Word(str):
    """A string the generator wrote itself (a module's state, a fixed task name): plain."""


class _Template(str):
    """The generator's own Jinja (`ignore_errors: "{{ ansible_check_mode }}"`): plain."""


def _unsafe_representer(dumper: yaml.SafeDumper, value: str):
    """Every other string came from the diff, the guest or the agent: `!unsafe`, which Ansible
    never templates (not in module arguments, not in task or play names)."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("!unsafe", str(value), style=style)


def _plain_representer(dumper: yaml.SafeDumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value))


KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class _Dumper(yaml.SafeDumper):
    def represent_mapping(self, tag, mapping, flow_style=None):
        # Keys are module and argument names the generator wrote: plain, and nothing else
        # may become a key (a guest string there would be a new argument or a template).
        for key in mapping:
            if not (isinstance(key, str) and KEY_RE.fullmatch(key)):
                raise ValueError(f"not a playbook key: {key!r}")
        node = super().represent_mapping(tag, mapping, flow_style)
        for key_node, _value in node.value:
            key_node.tag = "tag:yaml.org,2002:str"
        return node


_Dumper.add_representer(str, _unsafe_representer)
_Dumper.add_representer(_Word, _plain_representer)
_Dumper.add_representer(_Template, _plain_representer)


def _is_text(data: bytes) -> bool:
    if b"\0" in data[:8000]:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    # YAML cannot carry most control characters in a block scalar, and reads NEL, LS and PS
    # as line breaks: keep such files as files.
    return not any((ord(c) < 32 and c not in "\t\n") or c in "\r\x85\u2028\u2029" for c in text)


def _file_name(path: str, data: bytes) -> str:
    """A name under files/ that is one plain path component whatever the guest called the
    file: no `/`, no `..`, no Jinja, no control characters, not over NAME_MAX."""
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", posixpath.basename(path))[:100] or "file"
    return f"{hashlib.sha256(data).hexdigest()[:12]}-{base}"


def _valid_account(name) -> bool:
    return (
        isinstance(name, str)
        and bool(ACCOUNT_NAME_RE.fullmatch(name))
        and not name.isdigit()
        and name not in (".", "..")
    )


def _passwd_field(value, *, absolute: bool = False) -> bool:
    """useradd's own check: no `:` or newline (the file's separators); home and shell absolute."""
    ok = isinstance(value, str) and ":" not in value and "\n" not in value
    return ok and (not absolute or not value or value.startswith("/"))


def _valid_unit(name) -> bool:
    return isinstance(name, str) and len(name) <= 255 and bool(UNIT_NAME_RE.fullmatch(name))


def _mode(rec: dict) -> str:
    return "0" + rec["mode"][-4:].lstrip("0").rjust(3, "0") if rec.get("mode") else "0644"


def generate(
    diff: dict,
    state: TargetState,
    *,
    title: str,
    hosts: str = "all",
    source: str = "",
    inline_limit: int = INLINE_LIMIT,
    archive_min_files: int = ARCHIVE_MIN_FILES,
) -> Generated:
    out = Generated(yaml="")
    files = diff.get("files", {})
    packages = diff.get("packages", {})
    units = diff.get("units", {})
    users, groups = diff.get("users", {}), diff.get("groups", {})

    new_users = {u["name"]: u for u in users.get("added", [])}
    new_homes = {u["home"].rstrip("/") for u in new_users.values() if u.get("home")}
    package_files: dict[str, str] = {}
    for pkg, paths in state.owned.items():
        for p in paths:
            package_files[p] = pkg
    debs = {d.package: d for d in state.debs}
    deb_paths = {d.path for d in state.debs}

    def covered(rec: dict) -> str | None:
        path = rec["path"]
        if path in ACCOUNT_FILES:
            return "user and group tasks"
        if path.startswith(SIDE_EFFECT_PREFIXES) or path in SIDE_EFFECT_PREFIXES:
            return "written by dpkg/apt/systemd"
        if (
            WANTS_RE.match(path)
            and rec.get("type") == "l"
            and _valid_unit(posixpath.basename(path))
        ):
            # A name systemctl refuses has no systemd task: its link is copied as a link.
            return "systemd task (enabled)"
        if path in deb_paths:
            return "package task (copied with it)"
        for home in new_homes:
            if path == home:
                return "user task (create_home)"
            if path.startswith(home + "/"):
                rel = path[len(home) + 1 :]
                if rel in state.skel_sha256 and rec.get("sha256") == state.skel_sha256[rel]:
                    return "user task (copy of /etc/skel)"
                if rec.get("type") == "d" and any(
                    k.startswith(rel + "/") for k in state.skel_sha256
                ):
                    return "user task (copy of /etc/skel)"
        owner = package_files.get(path)
        if owner:
            if rec.get("type") != "f":
                return f"package {owner}"
            shipped = state.shipped_md5.get(path)
            data = state.contents.get(path)
            if shipped and data is not None and hashlib.md5(data).hexdigest() == shipped:  # noqa: S324 - dpkg's own checksum
                return f"package {owner} (as shipped)"
            if not shipped:
                return f"package {owner}"
        return None

    tasks: list[dict] = []

    # Groups, then users (a user's primary group must exist first).
    for g in groups.get("added", []) + groups.get("changed", []):
        g = g.get("after", g) if "after" in g else g
        if not _valid_account(g["name"]):
            out.warnings.append(
                f"group {g['name']!r}: groupadd refuses this name; not in the playbook, add it by hand"
            )
            continue
        tasks.append(
            {
                "name": f"Group {g['name']}",
                "ansible.builtin.group": {"name": g["name"], "gid": g["gid"], "state": PRESENT},
            }
        )
    for u in users.get("added", []) + [c.get("after", c) for c in users.get("changed", [])]:
        refused = _refused_user_fields(u)
        if refused:
            out.warnings.append(
                f"user {u['name']!r}: useradd refuses its {refused}; not in the playbook, add it by hand"
            )
            continue
        args = {
            "name": u["name"],
            "uid": u["uid"],
            "group": _group_name(u["gid"], groups, state),
            "home": u["home"],
            "shell": u["shell"],
            "comment": u.get("gecos", ""),
            "create_home": u["home"].rstrip("/") in new_homes,
            "state": PRESENT,
        }
        if args["group"] is None:
            args.pop("group")
            out.warnings.append(
                f"user {u['name']}: primary gid {u['gid']} has no group name; left to useradd"
            )
        tasks.append({"name": f"User {u['name']}", "ansible.builtin.user": args})

    # Packages: from the .deb the agent used when there is one, else from the repositories
    # (through the egress proxy, docs/egress.md): those in one apt task, pinned to the
    # versions the agent got, after refreshing a cache a fresh machine does not have yet.
    first_package_task, from_repositories = len(tasks), []
    for pkg in packages.get("installed", []) + packages.get("upgraded", []):
        name = pkg["name"]
        version = pkg.get("version") or pkg.get("new_version")
        if not _valid_package(name, version, out):
            continue
        deb = debs.get(name)
        if deb and deb.path in state.contents:
            data = state.contents[deb.path]
            fname = _file_name(deb.path, data)
            out.files[fname] = data
            tasks.append(
                {
                    "name": f"Package file {posixpath.basename(deb.path)}",
                    "ansible.builtin.copy": {
                        "src": f"files/{fname}",
                        "dest": deb.path,
                        "owner": ROOT,
                        "group": ROOT,
                        "mode": _Word("0644"),
                    },
                }
            )
            tasks.append(
                {
                    "name": f"Package {name} {version}",
                    "ansible.builtin.apt": {"deb": deb.path, "state": PRESENT},
                }
            )
        else:
            from_repositories.append(f"{name}={version}")
    if from_repositories:
        tasks.insert(
            first_package_task,
            {
                "name": "Packages from the repositories",
                "ansible.builtin.apt": {
                    "name": from_repositories,
                    "state": PRESENT,
                    # Always: a cache_valid_time would trust the empty lists of a fresh
                    # image by their mtime and find no package at all.
                    "update_cache": True,
                },
            },
        )
    for pkg in packages.get("removed", []):
        if not _valid_package(pkg["name"], pkg.get("version") or "0", out):
            continue
        tasks.append(
            {
                "name": f"Remove package {pkg['name']}",
                "ansible.builtin.apt": {"name": pkg["name"], "state": ABSENT},
            }
        )

    # New trees of many files travel as one archive; other directories (parents first),
    # files and links one task each.
    trees = _archived_trees(files.get("added", []), covered, state, archive_min_files)
    in_tree = {p for tree in trees for p in tree.paths}
    for tree in trees:
        data = tree.archive(state)
        fname = _file_name(tree.top + ".tar.gz", data)
        out.files[fname] = data
        tasks.append(
            {
                "name": f"Tree {tree.top} ({len(tree.paths)} entries)",
                "ansible.builtin.unarchive": {"src": f"files/{fname}", "dest": _Word("/")},
            }
        )
    added_dirs = [
        r for r in files.get("added", []) if r.get("type") == "d" and r["path"] not in in_tree
    ]
    for rec in sorted(added_dirs, key=lambda r: r["path"]):
        reason = covered(rec)
        if reason:
            out.skipped.append({"path": rec["path"], "reason": reason})
            continue
        tasks.append(
            {
                "name": f"Directory {rec['path']}",
                "ansible.builtin.file": {"path": rec["path"], "state": DIRECTORY, **_attrs(rec)},
            }
        )

    for section in ("added", "modified"):
        for rec in files.get(section, []):
            if (rec.get("type") == "d" and section == "added") or rec["path"] in in_tree:
                continue
            reason = covered(rec)
            if reason:
                out.skipped.append({"path": rec["path"], "reason": reason})
                continue
            tasks.extend(_file_tasks(rec, section, state, out, inline_limit))

    # Removals: only the top-most of removed trees.
    removed = sorted(r["path"] for r in files.get("removed", []))
    tops: list[str] = []
    for path in removed:
        if any(path.startswith(t.rstrip("/") + "/") for t in tops):
            continue
        rec = next(r for r in files["removed"] if r["path"] == path)
        reason = covered(rec)
        if reason:
            out.skipped.append({"path": path, "reason": reason})
            continue
        tops.append(path)
        tasks.append(
            {"name": f"Remove {path}", "ansible.builtin.file": {"path": path, "state": ABSENT}}
        )

    # systemd: reload once if any unit file changed, then enable/disable/mask.
    unit_files_changed = any(
        r["path"].startswith(("/etc/systemd/", "/lib/systemd/", "/usr/lib/systemd/"))
        and not WANTS_RE.match(r["path"])
        for s in ("added", "modified", "removed")
        for r in files.get(s, [])
    )
    named = {
        k: _valid_units(units.get(k, []), k, out)
        for k in ("enabled", "disabled", "masked", "unmasked")
    }
    if unit_files_changed or any(named.values()):
        tasks.append(
            {
                "name": _Word("Reload systemd units"),
                "ansible.builtin.systemd_service": {"daemon_reload": True},
            }
        )
    for unit in named["enabled"]:
        args = {"name": unit["name"], "enabled": True}
        if (
            unit["name"].endswith(".service")
            or unit["name"].endswith(".timer")
            or unit["name"].endswith(".socket")
        ):
            args["state"] = _Word("started")
        tasks.append({"name": f"Enable {unit['name']}", "ansible.builtin.systemd_service": args})
    for unit in named["disabled"]:
        tasks.append(
            {
                "name": f"Disable {unit['name']}",
                "ansible.builtin.systemd_service": {"name": unit["name"], "enabled": False},
            }
        )
    for unit in named["masked"]:
        tasks.append(
            {
                "name": f"Mask {unit['name']}",
                "ansible.builtin.systemd_service": {"name": unit["name"], "masked": True},
            }
        )
    for unit in named["unmasked"]:
        tasks.append(
            {
                "name": f"Unmask {unit['name']}",
                "ansible.builtin.systemd_service": {"name": unit["name"], "masked": False},
            }
        )

    _tolerate_in_check_mode(tasks, users, groups, files)

    for note in diff.get("notes", []):
        out.warnings.append(f"diff: {note}")

    play = [
        {
            "name": title,
            "hosts": _Word(hosts) if KEY_RE.fullmatch(hosts) else hosts,
            "become": True,
            "gather_facts": False,
            "tasks": tasks,
        }
    ]
    body = yaml.dump(play, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    out.task_count = len(tasks)
    out.yaml = _header(diff, source, out) + body
    return out


@dataclass
class _Tree:
    top: str
    records: list[dict]

    @property
    def paths(self) -> set[str]:
        return {r["path"] for r in self.records}

    def archive(self, state: TargetState) -> bytes:
        """A deterministic tar.gz of the tree, with the guest's owner names and modes, paths
        relative to /, so `unarchive dest=/` recreates it (tar --diff makes it idempotent)."""
        import gzip
        import io
        import tarfile

        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rec in sorted(self.records, key=lambda r: r["path"]):
                info = tarfile.TarInfo(rec["path"].lstrip("/"))
                info.mode = int(rec.get("mode") or "0644", 8)
                info.uname, info.gname = rec.get("owner") or "root", rec.get("group") or "root"
                info.mtime = ARCHIVE_MTIME
                if rec["type"] == "d":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif rec["type"] == "l":
                    info.type, info.linkname = tarfile.SYMTYPE, rec.get("target", "")
                    tar.addfile(info)
                else:
                    data = state.contents[rec["path"]]
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return gzip.compress(raw.getvalue(), mtime=0)


# Fixed: the same tree gives the same archive bytes (and tar --diff sees no change on a rerun).
ARCHIVE_MTIME = 1_700_000_000


def _archived_trees(added: list[dict], covered, state: TargetState, min_files: int) -> list[_Tree]:
    """Top-most new directories whose whole subtree is new, ours to write (nothing in it is
    covered by another task), readable and of plain files, links and directories."""
    by_path = {r["path"]: r for r in added}
    trees: list[_Tree] = []
    for rec in sorted((r for r in added if r.get("type") == "d"), key=lambda r: r["path"]):
        top = rec["path"]
        if any(top.startswith(t.top + "/") for t in trees) or covered(rec):
            continue
        inside = [r for p, r in by_path.items() if p == top or p.startswith(top + "/")]
        regular = [r for r in inside if r.get("type") == "f"]
        if len(regular) < min_files:
            continue
        if any(covered(r) for r in inside) or any(
            r.get("type") not in ("f", "d", "l") for r in inside
        ):
            continue
        if any(r["path"] not in state.contents for r in regular):
            continue
        trees.append(_Tree(top, inside))
    return trees


CHECK_MODE_TOLERANT = _Template("{{ ansible_check_mode }}")


def _tolerate_in_check_mode(tasks: list[dict], users: dict, groups: dict, files: dict) -> None:
    """A dry run (--check) changes nothing, so a task that needs an earlier task's change
    (a file owned by a new user, a package from a .deb copied just before, a unit file
    written just before) cannot succeed in it. Those tasks, and only those, ignore errors
    in check mode; a real run still fails on them."""
    new_users = {u["name"] for u in users.get("added", [])}
    new_groups = {g["name"] for g in groups.get("added", [])}
    new_units = {
        posixpath.basename(r["path"])
        for r in files.get("added", [])
        if r["path"].startswith(
            ("/etc/systemd/system/", "/usr/lib/systemd/system/", "/lib/systemd/system/")
        )
    }
    for task in tasks:
        module, args = next((k, v) for k, v in task.items() if k.startswith("ansible.builtin."))
        depends = (
            args.get("owner") in new_users
            or args.get("group") in new_groups
            or (module == "ansible.builtin.apt" and "deb" in args)
            or (module == "ansible.builtin.systemd_service" and args.get("name") in new_units)
        )
        if depends:
            task["ignore_errors"] = CHECK_MODE_TOLERANT


PRESENT, ABSENT, DIRECTORY, ROOT = (
    _Word("present"),
    _Word("absent"),
    _Word("directory"),
    _Word("root"),
)


def _refused_user_fields(u: dict) -> str:
    """The passwd fields of `u` that useradd would refuse, as words ("" when none)."""
    refused = [] if _valid_account(u["name"]) else ["name"]
    refused += [] if _passwd_field(u.get("gecos", "")) else ["comment"]
    refused += [f for f in ("home", "shell") if not _passwd_field(u.get(f, ""), absolute=True)]
    return ", ".join(refused)


def _valid_package(name, version, out: Generated) -> bool:
    """A name or version apt would read otherwise (a comma lists two packages, `=` pins) is
    not a task: it could install or remove something else on the target."""
    if (
        isinstance(name, str)
        and PACKAGE_NAME_RE.fullmatch(name)
        and isinstance(version, str)
        and PACKAGE_VERSION_RE.fullmatch(version)
    ):
        return True
    out.warnings.append(
        f"package {name!r} {version!r}: not a Debian package name and version; not in the playbook"
    )
    return False


def _valid_units(records: list[dict], change: str, out: Generated) -> list[dict]:
    kept = []
    for unit in records:
        if _valid_unit(unit["name"]):
            kept.append(unit)
        else:
            out.warnings.append(
                f"unit {unit['name']!r} ({change}): systemctl refuses this name; no systemd task, its files and links are copied as they are"
            )
    return kept


def _attrs(rec: dict) -> dict:
    fields = {}
    if rec.get("owner") is not None:
        fields["owner"] = rec["owner"]
    if rec.get("group") is not None:
        fields["group"] = rec["group"]
    fields["mode"] = _mode(rec)
    return fields


def _group_name(gid: int, groups: dict, state: TargetState) -> str | None:
    for g in groups.get("added", []) + [c.get("after", c) for c in groups.get("changed", [])]:
        if g.get("gid") == gid:
            return g["name"]
    return state.group_names.get(gid)


def _file_tasks(
    rec: dict, section: str, state: TargetState, out: Generated, inline_limit: int
) -> list[dict]:
    path, kind = rec["path"], rec.get("type")
    if kind == "l":
        return [
            {
                "name": f"Link {path}",
                "ansible.builtin.file": {
                    "path": path,
                    "src": rec.get("target", ""),
                    "state": _Word("link"),
                    "force": True,
                    **({"owner": rec["owner"]} if rec.get("owner") else {}),
                },
            }
        ]
    if kind == "d":  # a modified directory: its mode or owner
        return [
            {
                "name": f"Directory {path}",
                "ansible.builtin.file": {"path": path, "state": DIRECTORY, **_attrs(rec)},
            }
        ]
    if kind != "f":
        out.warnings.append(f"{path}: a special file (type {kind}) is created with a shell task")
        command = (
            f"mkfifo -m {_mode(rec)} {_shell_quote(path)}"
            if kind == "p"
            else f"test -e {_shell_quote(path)}"
        )
        return [
            {
                "name": f"Special file {path}",
                "ansible.builtin.shell": {"cmd": command, "creates": path},
            }
        ]
    changes = rec.get("changes", ["content"]) if section == "modified" else ["content"]
    if section == "modified" and not {"content", "type", "metadata"} & set(changes):
        return [
            {"name": f"Attributes of {path}", "ansible.builtin.file": {"path": path, **_attrs(rec)}}
        ]
    data = state.contents.get(path)
    if data is None:
        size = state.too_large.get(path, rec.get("size"))
        out.warnings.append(
            f"{path}: {size} bytes, over the size limit; not in the playbook, copy it by hand"
        )
        return []
    args: dict = {"dest": path, **_attrs(rec)}
    if len(data) <= inline_limit and _is_text(data):
        args = {"dest": path, "content": data.decode("utf-8"), **_attrs(rec)}
    else:
        fname = _file_name(path, data)
        out.files[fname] = data
        args = {"src": f"files/{fname}", **args}
        why = "binary" if not _is_text(data) else f"{len(data)} bytes"
        out.warnings.append(f"{path}: {why}, shipped as files/{fname} rather than inlined")
    verb = "Write" if section == "added" else "Update"
    return [{"name": f"{verb} {path}", "ansible.builtin.copy": args}]


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# Anything YAML reads as a line break (YAML 1.1 counts NEL, LS and PS too) or a reader might
# trip on: inside a `#` comment it would end the comment and start YAML of the guest's making.
_COMMENT_BREAKERS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029\ufeff]")


def _comment(text: str) -> str:
    return _COMMENT_BREAKERS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _header(diff: dict, source: str, out: Generated) -> str:
    summary = diff.get("summary", {})
    lines = [
        "# Generated by virsh-sandbox from the diff of a sandbox; review before applying.",
        f"# Source: {_comment(source)}" if source else "# Source: (unspecified)",
        f"# Generated: {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        "# Changes: "
        + ", ".join(
            _comment(f"{section} " + "/".join(f"{k} {v}" for k, v in counts.items() if v))
            for section, counts in summary.items()
            if any(counts.values())
        )
        if summary
        else "# Changes: (no summary)",
        f"# Tasks: {out.task_count}; left to other tasks: {len(out.skipped)} paths",
    ]
    if out.warnings:
        lines.append("# Warnings:")
        lines.extend(f"#   - {_comment(w)}" for w in out.warnings)
    else:
        lines.append("# Warnings: none")
    return "\n".join(lines) + "\n---\n"
