"""What the generator needs from the `to` state beyond the diff, read on the host from the
mounted snapshot: full file contents, which files each package owns (and their shipped
md5s), the .deb files a package can be installed from, and /etc/skel."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass, field


@dataclass
class DebFile:
    path: str  # in the guest
    package: str
    version: str
    arch: str


@dataclass
class TargetState:
    """Facts about the `to` state, all keyed by guest paths."""

    contents: dict[str, bytes] = field(default_factory=dict)
    too_large: dict[str, int] = field(default_factory=dict)
    owned: dict[str, set[str]] = field(default_factory=dict)  # package -> paths
    shipped_md5: dict[str, str] = field(default_factory=dict)  # path -> md5 as packaged
    debs: list[DebFile] = field(default_factory=list)
    skel_sha256: dict[str, str] = field(default_factory=dict)  # path relative to /etc/skel
    group_names: dict[int, str] = field(default_factory=dict)  # gid -> name in /etc/group


class MountedState:
    """Reads a guest filesystem mounted at `root` (never following a guest symlink out of it)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def host_path(self, guest_path: str) -> str:
        return self.root + "/" + guest_path.lstrip("/")

    def read(self, guest_path: str, limit: int) -> bytes | None:
        host = self.host_path(guest_path)
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
        return data if len(data) <= limit else None

    def size(self, guest_path: str) -> int:
        try:
            return os.lstat(self.host_path(guest_path)).st_size
        except OSError:
            return -1

    def package_lists(self, package: str, arch: str) -> tuple[set[str], dict[str, str]]:
        info = self.host_path("/var/lib/dpkg/info")
        paths: set[str] = set()
        md5s: dict[str, str] = {}
        for stem in (f"{package}:{arch}", package):
            listing = os.path.join(info, f"{stem}.list")
            if os.path.exists(listing):
                with open(listing, encoding="utf-8", errors="surrogateescape") as f:
                    paths = {line.rstrip("\n") for line in f if line.strip()}
                sums = os.path.join(info, f"{stem}.md5sums")
                if os.path.exists(sums):
                    with open(sums, encoding="utf-8", errors="surrogateescape") as f:
                        for line in f:
                            md5, _, rel = line.rstrip("\n").partition("  ")
                            if rel:
                                md5s["/" + rel] = md5
                break
        return paths, md5s

    def conffile_md5s(self) -> dict[str, str]:
        """Conffiles' md5 as shipped, from dpkg's status file."""
        found: dict[str, str] = {}
        status = self.host_path("/var/lib/dpkg/status")
        if not os.path.exists(status):
            return found
        in_conffiles = False
        with open(status, encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if line.startswith("Conffiles:"):
                    in_conffiles = True
                    continue
                if in_conffiles and line.startswith(" "):
                    parts = line.split()
                    if len(parts) >= 2:
                        found[parts[0]] = parts[1]
                    continue
                in_conffiles = False
        return found

    def deb_info(self, guest_path: str) -> DebFile | None:
        proc = subprocess.run(
            ["dpkg-deb", "-f", self.host_path(guest_path), "Package", "Version", "Architecture"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            return None
        fields = dict(
            line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line
        )
        if not fields.get("Package"):
            return None
        return DebFile(guest_path, fields["Package"], fields.get("Version", ""), fields.get("Architecture", ""))

    def apt_archive_debs(self) -> list[str]:
        archives = self.host_path("/var/cache/apt/archives")
        try:
            names = sorted(os.listdir(archives))
        except OSError:
            return []
        return [f"/var/cache/apt/archives/{n}" for n in names if n.endswith(".deb")]

    def group_names(self) -> dict[int, str]:
        found: dict[int, str] = {}
        data = self.read("/etc/group", 4 * 1024 * 1024) or b""
        for line in data.decode("utf-8", "replace").splitlines():
            parts = line.split(":")
            if len(parts) >= 3 and parts[2].isdigit():
                found.setdefault(int(parts[2]), parts[0])
        return found

    def skel(self) -> dict[str, str]:
        base = self.host_path("/etc/skel")
        found: dict[str, str] = {}
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    continue
                with open(full, "rb") as f:
                    found[os.path.relpath(full, base)] = hashlib.sha256(f.read()).hexdigest()
        return found


def read_target_state(root: str, diff: dict, *, inline_limit: int, file_limit: int) -> TargetState:
    """Everything the generator needs from the `to` state mounted at `root`."""
    reader = MountedState(root)
    state = TargetState(skel_sha256=reader.skel(), group_names=reader.group_names())
    packages = diff.get("packages", {})
    for pkg in packages.get("installed", []) + packages.get("upgraded", []):
        paths, md5s = reader.package_lists(pkg["name"], pkg.get("arch", ""))
        state.owned[pkg["name"]] = paths
        state.shipped_md5.update(md5s)
    state.shipped_md5.update(reader.conffile_md5s())
    wanted = {(p["name"], p.get("version") or p.get("new_version")) for p in
              packages.get("installed", []) + packages.get("upgraded", [])}
    candidates = [r["path"] for r in diff.get("files", {}).get("added", []) + diff.get("files", {}).get("modified", [])
                  if r.get("type") == "f" and r["path"].endswith(".deb")]
    for path in candidates + reader.apt_archive_debs():
        info = reader.deb_info(path)
        if info and (info.package, info.version) in wanted:
            state.debs.append(info)
    for section in ("added", "modified"):
        for rec in diff.get("files", {}).get(section, []):
            if rec.get("type") != "f":
                continue
            data = reader.read(rec["path"], file_limit)
            if data is None:
                state.too_large[rec["path"]] = reader.size(rec["path"])
            else:
                state.contents[rec["path"]] = data
    for deb in state.debs:
        if deb.path not in state.contents:
            data = reader.read(deb.path, file_limit)
            if data is not None:
                state.contents[deb.path] = data
    return state
