"""What changed between two Manifests: files, packages, systemd units, users and groups.

Metadata says *which* files may have changed; a hash (or the content itself) on both sides says
whether their content did. Without that evidence a timestamp-only change is reported as
modified with the change "metadata" (content unverified) rather than hidden.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .manifest import FileEntry, Manifest, Unit

TEXT_LIMIT = 64 * 1024
# Like git: a NUL in the first 8000 bytes makes a file binary.
_BINARY_SNIFF = 8000
_NO_EOL = "\\ No newline at end of file\n"

Record = dict[str, Any]


@dataclass
class Diff:
    """JSON-able lists, each sorted by path or name."""

    files: dict[str, list[Record]]  # added removed modified touched
    packages: dict[str, list[Record]]  # installed removed upgraded
    units: dict[str, list[Record]]  # enabled disabled masked unmasked changed
    users: dict[str, list[Record]]  # added removed changed
    groups: dict[str, list[Record]]  # added removed changed
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        sections = ("files", "packages", "units", "users", "groups")
        return {s: {k: len(v) for k, v in getattr(self, s).items()} for s in sections}

    @property
    def empty(self) -> bool:
        return not any(n for counts in self.summary.values() for n in counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "packages": self.packages,
            "units": self.units,
            "users": self.users,
            "groups": self.groups,
            "notes": self.notes,
            "summary": self.summary,
        }


def compare(
    before: Manifest,
    after: Manifest,
    *,
    hashes_before: Mapping[str, str] | None = None,
    hashes_after: Mapping[str, str] | None = None,
    contents_before: Mapping[str, bytes] | None = None,
    contents_after: Mapping[str, bytes] | None = None,
    text_limit: int = TEXT_LIMIT,
) -> Diff:
    """The difference from `before` to `after`. Hashes default to those the manifests carry
    (`Manifest.with_hashes`); contents (complete files) allow unified diffs of text files."""
    notes: list[str] = []
    side_b = _Side(before, {**before.hashes, **(hashes_before or {})}, contents_before or {})
    side_a = _Side(after, {**after.hashes, **(hashes_after or {})}, contents_after or {})
    return Diff(
        files=_compare_files(side_b, side_a, text_limit),
        packages=_compare_packages(before, after, notes),
        units=_compare_units(before, after, notes),
        users=_compare_records(before.users, after.users),
        groups=_compare_records(before.groups, after.groups),
        notes=notes,
    )


def paths_needing_hashes(
    before: Manifest, after: Manifest, *, include_added: bool = True
) -> list[str]:
    """Regular files whose metadata differs (and, by default, new ones): hash these, in both
    states, and nothing else. A file left alone keeps size, mtime, ctime and inode."""
    paths = []
    for path, new in after.files.items():
        if new.type != "f":
            continue
        old = before.files.get(path)
        if old is None:
            if include_added:
                paths.append(path)
        elif _stamp(old) != _stamp(new):
            paths.append(path)
    return sorted(paths)


def paths_needing_contents(
    before: Manifest,
    after: Manifest,
    *,
    hashes_before: Mapping[str, str] | None = None,
    hashes_after: Mapping[str, str] | None = None,
    max_bytes: int = TEXT_LIMIT,
) -> list[str]:
    """Regular files up to `max_bytes` that were added, removed, or whose content changed or
    may have: fetch these (in both states) for unified diffs."""
    diff = compare(before, after, hashes_before=hashes_before, hashes_after=hashes_after)
    paths = []
    for kind in ("added", "removed", "modified"):
        for rec in diff.files[kind]:
            sizes = [rec["size"], rec.get("before", {}).get("size", 0)]
            wanted = kind != "modified" or {"content", "metadata"} & set(rec["changes"])
            if rec["type"] == "f" and wanted and max(sizes) <= max_bytes:
                paths.append(rec["path"])
    return sorted(paths)


# -- files ---------------------------------------------------------------------------------


@dataclass
class _Side:
    manifest: Manifest
    hashes: Mapping[str, str]
    contents: Mapping[str, bytes]
    # Owner names as the guest knows them. `find -printf %u` resolved ids through the
    # passwd of the machine that ran it: the host, when the disk is read host-side.
    user_names: dict[int, str] = field(default_factory=dict)
    group_names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.user_names = {u.uid: u.name for u in self.manifest.users.values()}
        self.group_names = {g.gid: g.name for g in self.manifest.groups.values()}


def _stamp(entry: FileEntry) -> tuple[int, int, int, int]:
    return (entry.size, entry.mtime_ns, entry.ctime_ns, entry.inode)


def _same_content(path: str, b: _Side, a: _Side) -> bool | None:
    """True/False when hashes or full contents on both sides say so; None when unknown."""
    if path in b.hashes and path in a.hashes:
        return b.hashes[path] == a.hashes[path]
    if path in b.contents and path in a.contents:
        return b.contents[path] == a.contents[path]
    return None


def _changes(old: FileEntry, new: FileEntry, same_content: bool | None) -> list[str]:
    changes = []
    if old.type != new.type:
        changes.append("type")
    if old.mode != new.mode:
        changes.append("mode")
    if old.uid != new.uid:
        changes.append("owner")
    if old.gid != new.gid:
        changes.append("group")
    if old.type == new.type == "l" and old.target != new.target:
        changes.append("target")
    if old.type == new.type == "f":
        if old.size != new.size or same_content is False:
            changes.append("content")
        elif same_content is None and _stamp(old) != _stamp(new):
            changes.append("metadata")  # timestamps moved, no evidence about the content
    return changes


def _compare_files(b: _Side, a: _Side, text_limit: int) -> dict[str, list[Record]]:
    old_files, new_files = b.manifest.files, a.manifest.files
    result: dict[str, list[Record]] = {"added": [], "removed": [], "modified": [], "touched": []}
    for path in sorted(new_files.keys() - old_files.keys()):
        result["added"].append(
            _record(new_files[path], a, old=None, new=a.contents.get(path), limit=text_limit)
        )
    for path in sorted(old_files.keys() - new_files.keys()):
        rec = _record(old_files[path], b, old=b.contents.get(path), new=None, limit=text_limit)
        result["removed"].append(rec)
    for path in sorted(old_files.keys() & new_files.keys()):
        old, new = old_files[path], new_files[path]
        changes = _changes(old, new, _same_content(path, b, a))
        if changes:
            texts = (b.contents.get(path), a.contents.get(path))
            known = "content" in changes and None not in texts
            rec = _record(new, a, *(texts if known else (None, None)), limit=text_limit)
            rec["changes"] = changes
            rec["before"] = _attributes(old, b)
            result["modified"].append(rec)
        elif new.type != "d" and _stamp(old) != _stamp(new):
            # Directories' times and sizes move whenever an entry inside them comes or goes;
            # those entries are reported themselves, so only other types can be "touched".
            rec = _attributes(new, a)
            rec["path"] = path
            result["touched"].append(rec)
    return result


def _attributes(entry: FileEntry, side: _Side) -> Record:
    rec: Record = {
        "type": entry.type,
        "size": entry.size,
        "mode": f"{entry.mode:04o}",
        "owner": side.user_names.get(entry.uid, entry.user),
        "group": side.group_names.get(entry.gid, entry.group),
    }
    if entry.type == "l":
        rec["target"] = entry.target
    if entry.type == "f":
        rec["sha256"] = side.hashes.get(entry.path)
    return rec


def _record(
    entry: FileEntry, side: _Side, old: bytes | None, new: bytes | None, limit: int
) -> Record:
    texts = [t for t in (old, new) if t is not None]
    binary = any(b"\0" in t[:_BINARY_SNIFF] for t in texts)
    diff = None
    if texts and not binary and all(len(t) <= limit for t in texts):
        diff = _unified_diff(entry.path, old, new)
    return {"path": entry.path, **_attributes(entry, side), "binary": binary, "unified_diff": diff}


def _unified_diff(path: str, old: bytes | None, new: bytes | None) -> str:
    def lines(data: bytes | None) -> list[str]:
        return [] if data is None else data.decode("utf-8", "replace").splitlines(keepends=True)

    out = difflib.unified_diff(
        lines(old),
        lines(new),
        fromfile="/dev/null" if old is None else "a" + path,
        tofile="/dev/null" if new is None else "b" + path,
    )
    # difflib leaves a last line without "\n" glued to the next one; mark it the way git does.
    return "".join(line if line.endswith("\n") else line + "\n" + _NO_EOL for line in out)


# -- packages, units, users, groups -------------------------------------------------------------


def _compare_packages(before: Manifest, after: Manifest, notes: list[str]) -> dict[str, list]:
    result: dict[str, list[Record]] = {"installed": [], "removed": [], "upgraded": []}
    if before.packages is None or after.packages is None:
        notes.append("packages not compared: no package manager answered in one of the states")
        return result
    old = {k: p for k, p in before.packages.items() if p.installed}
    new = {k: p for k, p in after.packages.items() if p.installed}
    for key in sorted(new.keys() - old.keys()):
        p = new[key]
        result["installed"].append({"name": p.name, "version": p.version, "arch": p.arch})
    for key in sorted(old.keys() - new.keys()):
        p = old[key]
        result["removed"].append({"name": p.name, "version": p.version, "arch": p.arch})
    for key in sorted(old.keys() & new.keys()):
        o, n = old[key], new[key]
        if (o.version, o.arch) != (n.version, n.arch):
            # "upgraded" means "version changed": telling a downgrade apart needs dpkg's rules.
            result["upgraded"].append(
                {"name": n.name, "old_version": o.version, "new_version": n.version, "arch": n.arch}
            )
    return result


def _compare_units(before: Manifest, after: Manifest, notes: list[str]) -> dict[str, list]:
    result: dict[str, list[Record]] = {
        "enabled": [],
        "disabled": [],
        "masked": [],
        "unmasked": [],
        "changed": [],
    }
    with_states = before.systemctl and after.systemctl
    if not with_states:
        notes.append("unit states from systemctl not compared: missing in one of the states")
    for name in sorted(before.units.keys() | after.units.keys()):
        old, new = before.units.get(name, Unit(name)), after.units.get(name, Unit(name))
        was_enabled, is_enabled = bool(old.wanted_by), bool(new.wanted_by)
        if is_enabled and not was_enabled:
            result["enabled"].append({"name": name, "wanted_by": list(new.wanted_by)})
        if was_enabled and not is_enabled:
            result["disabled"].append({"name": name, "wanted_by": list(old.wanted_by)})
        if new.masked and not old.masked:
            result["masked"].append({"name": name})
        if old.masked and not new.masked:
            result["unmasked"].append({"name": name})
        # systemctl's view adds what links cannot say (a new unit file, static, alias...);
        # a change the links already explain is not repeated.
        explained = was_enabled != is_enabled or old.masked != new.masked
        if with_states and not explained and old.state != new.state:
            result["changed"].append({"name": name, "before": old.state, "after": new.state})
    return result


def _compare_records(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list]:
    def fields(record: Any) -> Record:
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name in record.__slots__
            for value in [getattr(record, name)]
        }

    result: dict[str, list[Record]] = {"added": [], "removed": [], "changed": []}
    for name in sorted(new.keys() - old.keys()):
        result["added"].append(fields(new[name]))
    for name in sorted(old.keys() - new.keys()):
        result["removed"].append(fields(old[name]))
    for name in sorted(old.keys() & new.keys()):
        o, n = fields(old[name]), fields(new[name])
        changed = {k: [o[k], n[k]] for k in o if o[k] != n[k]}
        if changed:
            result["changed"].append({"name": name, "changes": changed})
    return result
