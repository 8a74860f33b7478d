"""The part of guest-disk reading that touches guest bytes. It runs only inside the reader's
namespaces (see guest_reader.py): root of a user namespace that maps to nobody on the host,
no network, its own mount and pid namespaces. Standard library plus the diffing package and
the ext4 parser, shipped beside it in a zipapp; no Django, nothing from the checkout.

stdin: {"job": name, "params": {...}, "image_fds": [fd, ...]}; stdout: the job's JSON answer.
The filesystem is never mounted: `ext4.py` parses the private copy in this process, after
`e2fsck -E journal_only` replayed its journal. Names are resolved through directory entries
by the parser itself: paths from the listing with no symlink at all, well-known files
(/etc/passwd, dpkg's status) with symlinks resolved as the guest would, clamped to its root,
so nothing can lead out of the guest. Only regular files' blocks are ever read, and every
read stops at a cap. Unit files are copied (as bytes and symlink records) into this
process's private tmpfs for an offline `systemctl --root`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys

import diffing

if __package__ in (None, ""):  # as the zipapp's __main__
    import ext4
else:  # imported by the test suite
    from sandboxes.drivers import ext4

ACCOUNT_LIMIT = 8 << 20
STATUS_LIMIT = 64 << 20
LIST_LIMIT = 32 << 20
UNIT_FILE_LIMIT = 1 << 20
UNIT_COPY_LIMIT = 64 << 20
MAX_DIR_ENTRIES = 20000
SYSTEMCTL_TIMEOUT = 60
# Where unit files live, relative to the guest root; copied out (symlinks as symlinks) for an
# offline `systemctl --root`, which is slow on FUSE and must not run against guest paths.
UNIT_DIRS = (
    "etc/systemd/system",
    "etc/systemd/system-preset",
    "usr/lib/systemd/system",
    "usr/lib/systemd/system-preset",
    "lib/systemd/system",
    "lib/systemd/system-preset",
    "usr/local/lib/systemd/system",
)


class GuestRoot:
    """One guest filesystem image, parsed in this process (never mounted)."""

    def __init__(self, fd: int):
        self.fs = ext4.Ext4(fd)

    def _inode(self, guest_path: str, physical: bool):
        try:
            return self.fs.lookup(guest_path, follow=not physical)
        except ext4.Ext4Error:
            return None

    def read(
        self, guest_path: str, limit: int, *, physical: bool = True
    ) -> tuple[str, bytes | None, int]:
        """(kind, data, size): kind "f" with data (None when over `limit`), or what it is
        instead ("missing", "l", "d", "p", "c", "b", "s"). physical: the path as listed, no
        symlink anywhere on it; otherwise symlinks resolve inside the guest root."""
        inode = self._inode(guest_path, physical)
        if inode is None:
            return "missing", None, -1
        if inode.kind != "f":
            return inode.kind, None, inode.size
        if inode.size > limit:
            return "f", None, inode.size
        try:
            return "f", self.fs.read(inode, limit), inode.size
        except ext4.Ext4Error:
            return "unreadable", None, inode.size

    def sha256(self, guest_path: str, limit: int) -> str | None:
        inode = self._inode(guest_path, True)
        if inode is None or inode.kind != "f" or inode.size > limit:
            return None
        digest = hashlib.sha256()
        try:
            for block in self.fs.chunks(inode):
                digest.update(block)
        except ext4.Ext4Error:
            return None
        return digest.hexdigest()

    def listdir(self, guest_path: str) -> list[str]:
        inode = self._inode(guest_path, False)
        if inode is None or inode.kind != "d":
            return []
        return sorted(os.fsdecode(n) for n in self.fs.children(inode))[:MAX_DIR_ENTRIES]

    def walk_regular(self, guest_dir: str, limit: int) -> dict[str, bytes | None]:
        """{relative path: content (None over `limit`)} of the regular files below a directory
        (itself resolved in root), never through a symlink on the way down."""
        top = self._inode(guest_dir, False)
        found: dict[str, bytes | None] = {}
        if top is None or top.kind != "d":
            return found
        for rel, inode in _walk_from(self.fs, top):
            if inode.kind == "f" and len(found) < MAX_DIR_ENTRIES:
                try:
                    found[os.fsdecode(rel)] = (
                        self.fs.read(inode, limit) if inode.size <= limit else None
                    )
                except ext4.Ext4Error:
                    found[os.fsdecode(rel)] = None
        return found


def _walk_from(fs, top) -> list:
    """(relative path, inode) below a directory inode, not entering symlinks or cycles."""
    out, stack, entered = [], [(b"", top)], {top.ino}
    while stack and len(out) < MAX_DIR_ENTRIES:
        base, directory = stack.pop()
        for name, ino in sorted(fs.children(directory).items()):
            child = fs.inode(ino)
            rel = base + name
            out.append((rel, child))
            if child.kind == "d" and child.ino not in entered:
                entered.add(child.ino)
                stack.append((rel + b"/", child))
    return out


# -- mounting ---------------------------------------------------------------------------


def _check(cmd: list[str], what: str, timeout: float, ok=(0,), pass_fds=()) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, pass_fds=pass_fds)
    if proc.returncode not in ok:
        sys.stderr.write(
            f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}\n"
        )
        raise SystemExit(3)


def open_images(image_fds: list[int]) -> list[GuestRoot]:
    """A private tmpfs for scratch, then each image with its journal replayed in userspace
    (on the private copy) and parsed here."""
    _check(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1g,mode=0700,nosuid,nodev,noexec",
            "vsb-reader",
            "/tmp",
        ],
        "scratch tmpfs",
        30,
    )
    roots = []
    for fd in image_fds:
        # -p: replay the journal only (and fix nothing else); 1 means "journal replayed".
        _check(
            [
                os.environ.get("VSB_E2FSCK", "e2fsck"),
                "-E",
                "journal_only",
                "-p",
                f"/proc/self/fd/{fd}",
            ],
            "replaying the guest's journal (e2fsck)",
            300,
            ok=(0, 1),
            pass_fds=(fd,),
        )
        try:
            roots.append(GuestRoot(fd))
        except ext4.Ext4Error as exc:
            sys.stderr.write(f"cannot read the guest filesystem: {exc}\n")
            raise SystemExit(3) from None
    return roots


# -- the state manifest ------------------------------------------------------------------

_WANT = {"unknown": "u", "install": "i", "hold": "h", "deinstall": "r", "purge": "p"}
_STATE = {
    "not-installed": "n",
    "config-files": "c",
    "half-installed": "H",
    "unpacked": "U",
    "half-configured": "F",
    "triggers-awaited": "W",
    "triggers-pending": "t",
    "installed": "i",
}


def dpkg_section(status: bytes) -> bytes:
    """What `dpkg-query -W -f='${Package}\\t${Version}\\t${Architecture}\\t${db:Status-Abbrev}\\n'`
    prints, computed from the status file's text instead of pointing dpkg at guest paths."""
    lines = []
    for stanza in status.decode("utf-8", "replace").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        name, state = fields.get("Package"), fields.get("Status", "").split()
        if not name or len(state) != 3 or state[2] == "not-installed":
            continue
        abbrev = (
            _WANT.get(state[0], "u")
            + _STATE.get(state[2], "n")
            + ("R" if state[1] == "reinstreq" else " ")
        )
        lines.append(
            f"{name}\t{fields.get('Version', '')}\t{fields.get('Architecture', '')}\t{abbrev}\n"
        )
    return "".join(lines).encode()


def copy_units(root: GuestRoot, dest: str) -> None:
    """The unit directories, copied with symlinks as symlinks (systemctl resolves them under
    --root) and only regular files otherwise, each and all capped."""
    total = 0
    for rel in UNIT_DIRS:
        top = root._inode(rel, True)  # physical: /lib -> usr/lib is recreated below
        if top is None or top.kind != "d":
            continue
        for sub, inode in _walk_from(root.fs, top):
            out = os.path.join(dest, rel, os.fsdecode(sub))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            try:
                if inode.kind == "d":
                    os.makedirs(out, exist_ok=True)
                elif inode.kind == "l":
                    os.symlink(root.fs.symlink_target(inode), os.fsencode(out))
                elif (
                    inode.kind == "f" and inode.size <= UNIT_FILE_LIMIT and total < UNIT_COPY_LIMIT
                ):
                    data = root.fs.read(inode, UNIT_FILE_LIMIT)
                    total += len(data)
                    with open(out, "wb") as f:
                        f.write(data)
            except (OSError, ext4.Ext4Error):
                continue
    # Merged-/usr guests: /lib -> usr/lib, as a symlink systemctl follows inside --root.
    top_level = root.fs.children(root.fs.inode(ext4.ROOT_INO))
    for top_link in ("lib", "lib64", "bin", "sbin"):
        link = top_level.get(top_link.encode())
        if link is None:
            continue
        child = root.fs.inode(link)
        if child.kind == "l" and not os.path.lexists(os.path.join(dest, top_link)):
            os.symlink(root.fs.symlink_target(child), os.fsencode(os.path.join(dest, top_link)))


def systemctl_section(root: GuestRoot, index: int) -> bytes | None:
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    dest = f"/tmp/units{index}"
    os.mkdir(dest, 0o700)
    copy_units(root, dest)
    try:
        proc = subprocess.run(
            [systemctl, f"--root={dest}", "list-unit-files", "--no-legend", "--no-pager"],
            capture_output=True,
            timeout=SYSTEMCTL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return None
    return proc.stdout if proc.returncode == 0 else None


_RECORD = "{kind}\t{size}\t{mtime}\t{ctime}\t{ino}\t{mode:o}\t{uid}\t{gid}\t{uid}\t{gid}\t"


def _stamp(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    whole, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


def file_records(root: GuestRoot, excludes: list[str]) -> bytes:
    """What the collector's `find -xdev -printf` prints, from the parser: one record per
    entry, NUL-terminated path and symlink target. Owner names are left as numbers; the diff
    names them from the guest's own /etc/passwd and /etc/group."""
    patterns = [os.fsencode(diffing.collector._relative(e)) for e in excludes if e.strip("/")]

    def skip(path: bytes) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in patterns)

    out = []
    for path, inode in root.fs.walk(skip):
        target = b""
        if inode.kind == "l":
            try:
                target = root.fs.symlink_target(inode).replace(b"\0", b"")
            except ext4.Ext4Error:
                target = b""
        head = _RECORD.format(
            kind=inode.kind,
            size=inode.size,
            mtime=_stamp(inode.mtime_ns),
            ctime=_stamp(inode.ctime_ns),
            ino=inode.ino,
            mode=inode.mode & 0o7777,
            uid=inode.uid,
            gid=inode.gid,
        )
        out.append(head.encode() + path + b"\0" + target + b"\0")
    return b"".join(out)


def manifest_document(root: GuestRoot, index: int, excludes: list[str]) -> bytes:
    """The collector's document (see diffing.collector_script), built from the parser and the
    safe reads above instead of running tools against guest paths."""
    boundary = secrets.token_hex(8).encode()
    parts = [diffing.collector.MANIFEST_MAGIC + boundary + b"\n"]

    def section(name: str, body: bytes, rc: bool = False) -> None:
        parts.append(b"\n--" + boundary + b" " + name.encode() + b"\n" + body)
        if rc:
            parts.append(b"\n--" + boundary + b" rc 0\n")

    kind, status, _ = root.read("/var/lib/dpkg/status", STATUS_LIMIT, physical=False)
    if kind == "f" and status is not None:
        section("dpkg", dpkg_section(status), rc=True)
    units = systemctl_section(root, index)
    if units is not None:
        section("systemctl", units, rc=True)
    for name in ("passwd", "group"):
        kind, data, _ = root.read(f"/etc/{name}", ACCOUNT_LIMIT, physical=False)
        if kind == "f" and data is not None:
            section(name, data)
    try:
        section("files", file_records(root, excludes))
    except ext4.Ext4Error as exc:
        sys.stderr.write(f"listing the guest's files failed: {exc}\n")
        raise SystemExit(3) from None
    section("end", b"")
    return b"".join(parts)


# -- jobs --------------------------------------------------------------------------------


def job_diff(roots: list[GuestRoot], params: dict) -> dict:
    excludes = params["excludes"]
    content_limit, max_files, hash_limit = (
        params["content_limit"],
        params["max_content_files"],
        params["hash_limit"],
    )
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        before, after = pool.map(
            lambda pair: diffing.parse(manifest_document(pair[1], pair[0], excludes)),
            enumerate(roots),
        )
        need = diffing.paths_needing_hashes(before, after)

        def hashes(root: GuestRoot, manifest) -> dict[str, str]:
            found = {}
            for path in need:
                if path in manifest.files and (h := root.sha256(path, hash_limit)):
                    found[path] = h
            return found

        hashes_before, hashes_after = pool.map(hashes, roots, (before, after))
        text = diffing.paths_needing_contents(
            before, after, hashes_before=hashes_before, hashes_after=hashes_after
        )

        def contents(root: GuestRoot, manifest) -> dict[str, bytes]:
            found = {}
            for path in [p for p in text if p in manifest.files][:max_files]:
                kind, data, _ = root.read(path, content_limit)
                if kind == "f" and data is not None:
                    found[path] = data
            return found

        contents_before, contents_after = pool.map(contents, roots, (before, after))
    return diffing.compare(
        before,
        after,
        hashes_before=hashes_before,
        hashes_after=hashes_after,
        contents_before=contents_before,
        contents_after=contents_after,
    ).to_dict()


def _deb_fields(data: bytes) -> dict[str, str] | None:
    path = "/tmp/candidate.deb"
    with open(path, "wb") as f:
        f.write(data)
    try:
        proc = subprocess.run(
            ["dpkg-deb", "-f", path, "Package", "Version", "Architecture"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return None
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        return None
    fields = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    return fields if fields.get("Package") else None


def _package_lists(root: GuestRoot, package: str, arch: str) -> tuple[list[str], dict[str, str]]:
    for stem in (f"{package}:{arch}", package):
        if "/" in stem or stem.startswith("."):
            continue
        kind, listing, _ = root.read(f"/var/lib/dpkg/info/{stem}.list", LIST_LIMIT, physical=False)
        if kind != "f" or listing is None:
            continue
        paths = [
            line for line in listing.decode("utf-8", "surrogateescape").split("\n") if line.strip()
        ]
        md5s = {}
        kind, sums, _ = root.read(f"/var/lib/dpkg/info/{stem}.md5sums", LIST_LIMIT, physical=False)
        if kind == "f" and sums is not None:
            for line in sums.decode("utf-8", "surrogateescape").split("\n"):
                md5, _, rel = line.partition("  ")
                if rel:
                    md5s["/" + rel] = md5
        return paths, md5s
    return [], {}


def _conffile_md5s(root: GuestRoot) -> dict[str, str]:
    found: dict[str, str] = {}
    kind, status, _ = root.read("/var/lib/dpkg/status", STATUS_LIMIT, physical=False)
    if kind != "f" or status is None:
        return found
    in_conffiles = False
    for line in status.decode("utf-8", "surrogateescape").split("\n"):
        if line.startswith("Conffiles:"):
            in_conffiles = True
        elif in_conffiles and line.startswith(" "):
            parts = line.split()
            if len(parts) >= 2:
                found[parts[0]] = parts[1]
        else:
            in_conffiles = False
    return found


def job_target_state(roots: list[GuestRoot], params: dict) -> dict:
    """What the playbook generator needs from the `to` state (playbooks.state)."""
    root, diff = roots[0], params["diff"]
    file_limit = params["file_limit"]
    skel = {
        rel: hashlib.sha256(data).hexdigest()
        for rel, data in root.walk_regular("/etc/skel", file_limit).items()
        if data is not None
    }
    group_names: dict[str, str] = {}
    kind, group, _ = root.read("/etc/group", ACCOUNT_LIMIT, physical=False)
    for line in (group or b"").decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            group_names.setdefault(parts[2], parts[0])
    packages = diff.get("packages", {})
    owned, shipped = {}, {}
    wanted_pkgs = packages.get("installed", []) + packages.get("upgraded", [])
    for pkg in wanted_pkgs:
        paths, md5s = _package_lists(root, pkg["name"], pkg.get("arch", ""))
        owned[pkg["name"]] = paths
        shipped.update(md5s)
    shipped.update(_conffile_md5s(root))
    wanted = {(p["name"], p.get("version") or p.get("new_version")) for p in wanted_pkgs}
    files = diff.get("files", {})
    contents: dict[str, str] = {}
    too_large: dict[str, int] = {}
    for section in ("added", "modified"):
        for rec in files.get(section, []):
            if rec.get("type") != "f":
                continue
            kind, data, size = root.read(rec["path"], file_limit)
            if kind == "f" and data is not None:
                contents[rec["path"]] = base64.b64encode(data).decode()
            else:
                too_large[rec["path"]] = size
    debs = []
    if wanted:
        candidates = [
            r["path"]
            for r in files.get("added", []) + files.get("modified", [])
            if r.get("type") == "f" and r["path"].endswith(".deb")
        ]
        archives = [
            f"/var/cache/apt/archives/{n}"
            for n in root.listdir("/var/cache/apt/archives")
            if n.endswith(".deb")
        ]
        for path in candidates + archives:
            kind, data, _ = root.read(path, file_limit)
            if kind != "f" or data is None:
                continue
            fields = _deb_fields(data)
            if fields and (fields["Package"], fields.get("Version", "")) in wanted:
                debs.append(
                    {
                        "path": path,
                        "package": fields["Package"],
                        "version": fields.get("Version", ""),
                        "arch": fields.get("Architecture", ""),
                    }
                )
                contents.setdefault(path, base64.b64encode(data).decode())
    return {
        "contents": contents,
        "too_large": too_large,
        "owned": owned,
        "shipped_md5": shipped,
        "debs": debs,
        "skel_sha256": skel,
        "group_names": group_names,
    }


def job_probe(roots: list[GuestRoot], params: dict) -> dict:
    """For tests: what the job is and what it reads at the given paths."""
    if params.get("sleep_seconds"):
        import time

        time.sleep(params["sleep_seconds"])
    reads = {}
    for path in params.get("paths", []):
        kind, data, size = roots[0].read(
            path, params.get("limit", 1 << 20), physical=params.get("physical", True)
        )
        reads[path] = {
            "kind": kind,
            "size": size,
            "data": base64.b64encode(data).decode() if data is not None else None,
        }
    host = {}
    for path in params.get("host_paths", []):
        try:
            with open(path, "rb") as f:
                host[path] = f"read {len(f.read(64))} bytes"
        except OSError as exc:
            host[path] = exc.strerror
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "reads": reads,
        "host": host,
        "interfaces": sorted(
            line.split(":")[0].strip() for line in open("/proc/self/net/dev").readlines()[2:]
        ),
        "mounts": open("/proc/self/mounts").read(),
    }


JOBS = {"diff": job_diff, "target_state": job_target_state, "probe": job_probe}


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    job = JOBS[request["job"]]
    roots = open_images(request["image_fds"])
    answer = job(roots, request["params"])
    sys.stdout.buffer.write(json.dumps(answer).encode())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
