"""A guest's state at one moment, parsed from `collector_script()`'s output, and its JSON form.

A Manifest holds metadata only (plus whatever hashes the caller adds): it is cheap to take at
every snapshot and small enough for a database row. See docs/diff.md.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from .collector import MANIFEST_MAGIC, absolute

FORMAT_VERSION = 1
_UNIT_DIRS = "/etc/systemd/system/"
_WANTS_SUFFIXES = (".wants", ".requires")


class ManifestError(ValueError):
    """The collector's output cannot be trusted: not a manifest, or cut short."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    type: str  # as find's %y: f d l, rarely p s b c
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    mode: int  # permission bits, with setuid/setgid/sticky
    uid: int
    gid: int
    user: str  # names as the guest resolved them (the number when unknown)
    group: str
    target: str = ""  # symlinks only


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    version: str
    arch: str
    status: str  # dpkg's db:Status-Abbrev ("ii "); rpm lists only installed ones ("ii ")
    manager: str  # dpkg or rpm

    @property
    def installed(self) -> bool:
        # Second letter is the current state: "ii" and "hi" (on hold) are installed, "rc"
        # (removed, config files left) is not.
        return self.status[1:2] == "i"


@dataclass(frozen=True, slots=True)
class Unit:
    name: str
    wanted_by: tuple[str, ...] = ()  # the .wants/.requires directories linking it in /etc
    masked: bool = False  # /etc/systemd/system/<name> -> /dev/null
    state: str | None = None  # from `systemctl list-unit-files`, when it answered


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    files: dict[str, FileEntry]
    packages: dict[str, Package] | None  # None: no package manager answered
    units: dict[str, Unit]
    users: dict[str, User]
    groups: dict[str, Group]
    systemctl: bool = False  # whether `Unit.state` was filled in
    hashes: dict[str, str] = field(default_factory=dict)  # path -> sha256, for some files

    def with_hashes(self, hashes: dict[str, str]) -> Manifest:
        """A copy that also knows these sha256 sums (for `compare()`)."""
        return replace(self, hashes={**self.hashes, **hashes})

    # -- serialisation: rows, not objects, to keep 6k files far below 1 MB ---------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "files": _pack_files(self.files),
            "packages": None
            if self.packages is None
            else [[key, *_astuple(p)] for key, p in self.packages.items()],
            "units": [[u.name, list(u.wanted_by), u.masked, u.state] for u in self.units.values()],
            "users": [list(_astuple(u)) for u in self.users.values()],
            "groups": [[g.name, g.gid, list(g.members)] for g in self.groups.values()],
            "systemctl": self.systemctl,
            "hashes": self.hashes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("v") != FORMAT_VERSION:
            raise ManifestError(f"unsupported manifest version {data.get('v')!r}")
        packages = data["packages"]
        return cls(
            files=_unpack_files(data["files"]),
            packages=None if packages is None else {row[0]: Package(*row[1:]) for row in packages},
            units={r[0]: Unit(r[0], tuple(r[1]), r[2], r[3]) for r in data["units"]},
            users={row[0]: User(*row) for row in data["users"]},
            groups={r[0]: Group(r[0], r[1], tuple(r[2])) for r in data["groups"]},
            systemctl=data["systemctl"],
            hashes=dict(data["hashes"]),
        )

    def to_json(self) -> str:
        """Compact JSON. ASCII only: names that are not UTF-8 are kept as \\udcXX escapes,
        which PostgreSQL's jsonb refuses, so store this as text (or `to_gzip()` bytes)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_dict(json.loads(text))

    def to_gzip(self) -> bytes:
        return gzip.compress(self.to_json().encode("ascii"), compresslevel=6)

    @classmethod
    def from_gzip(cls, blob: bytes) -> Manifest:
        return cls.from_json(gzip.decompress(blob))


def _pack_files(files: dict[str, FileEntry]) -> dict[str, list[list[Any]]]:
    """Rows grouped by directory, ctime as an offset from mtime (mostly 0), no empty target:
    a third of the naive size, and still plain JSON."""
    by_dir: dict[str, list[list[Any]]] = defaultdict(list)
    for e in files.values():
        directory, _, name = e.path.rpartition("/")
        row = [name, e.type, e.size, e.mtime_ns, e.ctime_ns - e.mtime_ns, e.inode, e.mode]
        row += [e.uid, e.gid, e.user, e.group]
        if e.target:
            row.append(e.target)
        by_dir[directory].append(row)
    return by_dir


def _unpack_files(by_dir: dict[str, list[list[Any]]]) -> dict[str, FileEntry]:
    files = {}
    for directory, rows in by_dir.items():
        for name, kind, size, mtime, ctime_offset, *rest in rows:
            path = f"{directory}/{name}"
            files[path] = FileEntry(path, kind, size, mtime, mtime + ctime_offset, *rest)
    return files


def _astuple(obj: Any) -> tuple[Any, ...]:
    # dataclasses.astuple deep-copies; these are flat, so read the slots directly.
    return tuple(getattr(obj, name) for name in obj.__slots__)


# -- parsing the collector's document ------------------------------------------------------


def parse(stdout: bytes) -> Manifest:
    """Turn `collector_script()` output into a Manifest; ManifestError if it is not one or
    was cut short (for instance by an SSH output limit)."""
    sections = _sections(stdout)
    files = _parse_files(sections.get("files", b""))
    packages = _parse_packages(sections)
    systemctl = sections.get("systemctl")
    units = _derive_units(files, _parse_unit_states(systemctl) if systemctl is not None else {})
    return Manifest(
        files=files,
        packages=packages,
        units=units,
        users=_parse_users(sections.get("passwd", b"")),
        groups=_parse_groups(sections.get("group", b"")),
        systemctl=systemctl is not None,
    )


def _sections(stdout: bytes) -> dict[str, bytes]:
    """{name: body} of the sections whose command succeeded (see `collector_script`)."""
    if not stdout.startswith(MANIFEST_MAGIC):
        raise ManifestError("not a state manifest (missing header)")
    header_end = stdout.find(b"\n")
    boundary = stdout[len(MANIFEST_MAGIC) : header_end]
    chunks = stdout[header_end + 1 :].split(b"\n--" + boundary + b" ")
    sections: dict[str, bytes] = {}
    last = ""
    for chunk in chunks[1:]:
        name_bytes, _, body = chunk.partition(b"\n")
        name = name_bytes.decode()
        if name.startswith("rc "):
            if name != "rc 0":
                sections.pop(last, None)  # a failed command's partial output is no state
            continue
        sections[name] = body
        last = name
    if last != "end":
        raise ManifestError("state manifest was cut short (no end marker)")
    return sections


def _seconds_to_ns(text: bytes) -> int:
    sign = -1 if text.startswith(b"-") else 1
    whole, _, frac = text.lstrip(b"-").partition(b".")
    return sign * (int(whole) * 1_000_000_000 + int(frac[:9].ljust(9, b"0") or b"0"))


def _parse_files(body: bytes) -> dict[str, FileEntry]:
    tokens = body.split(b"\0")
    files: dict[str, FileEntry] = {}
    for record, target in zip(tokens[0:-1:2], tokens[1::2], strict=False):
        kind, size, mtime, ctime, inode, mode, uid, gid, user, group, path = record.split(b"\t", 10)
        entry = FileEntry(
            path=absolute(path),
            type=kind.decode(),
            size=int(size),
            mtime_ns=_seconds_to_ns(mtime),
            ctime_ns=_seconds_to_ns(ctime),
            inode=int(inode),
            mode=int(mode, 8),
            uid=int(uid),
            gid=int(gid),
            user=user.decode(errors="replace"),
            group=group.decode(errors="replace"),
            target=target.decode(errors="surrogateescape"),
        )
        files[entry.path] = entry
    return files


def _parse_packages(sections: dict[str, bytes]) -> dict[str, Package] | None:
    found: list[Package] = []
    managers = [m for m in ("dpkg", "rpm") if m in sections]
    if not managers:
        return None
    for manager in managers:
        for line in sections[manager].decode(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) >= 4 and parts[0]:
                found.append(Package(parts[0], parts[1], parts[2], parts[3], manager))
    # Keyed by name; only where a name repeats (multiarch, parallel kernels) add more.
    by_name: dict[str, list[Package]] = defaultdict(list)
    for package in found:
        by_name[package.name].append(package)
    packages: dict[str, Package] = {}
    for name, group in by_name.items():
        for package in group:
            key = name
            if len(group) > 1:
                key = f"{name}:{package.arch}"
                if sum(p.arch == package.arch for p in group) > 1:
                    key = f"{key}:{package.version}"
            packages[key] = package
    return packages


def _parse_unit_states(body: bytes) -> dict[str, str]:
    states = {}
    for line in body.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1]
    return states


def _derive_units(files: dict[str, FileEntry], states: dict[str, str]) -> dict[str, Unit]:
    """Enablement from the links in /etc/systemd/system, which is what `systemctl enable`
    writes and PID 1 reads: true whether or not systemd is running now."""
    wanted_by: dict[str, list[str]] = defaultdict(list)
    masked: set[str] = set()
    for path, entry in files.items():
        if not path.startswith(_UNIT_DIRS):
            continue
        parts = path[len(_UNIT_DIRS) :].split("/")
        if len(parts) == 2 and parts[0].endswith(_WANTS_SUFFIXES) and entry.type != "d":
            wanted_by[parts[1]].append(parts[0])
        elif len(parts) == 1 and entry.type == "l" and entry.target == "/dev/null":
            masked.add(parts[0])
    names = sorted(set(wanted_by) | masked | set(states))
    return {
        name: Unit(name, tuple(sorted(wanted_by.get(name, ()))), name in masked, states.get(name))
        for name in names
    }


def _parse_users(body: bytes) -> dict[str, User]:
    users = {}
    for line in body.decode(errors="replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and parts[0] and parts[2].isdigit() and parts[3].isdigit():
            users[parts[0]] = User(
                parts[0], int(parts[2]), int(parts[3]), parts[4], parts[5], ":".join(parts[6:])
            )
    return users


def _parse_groups(body: bytes) -> dict[str, Group]:
    groups = {}
    for line in body.decode(errors="replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] and parts[2].isdigit():
            members = tuple(m for m in parts[3].split(",") if m)
            groups[parts[0]] = Group(parts[0], int(parts[2]), members)
    return groups
