"""Shell scripts that capture a guest's state over SSH, and parsers for what they print.

Every script is POSIX sh (dash, busybox sh, bash) and strictly read-only: anything it wrote in
the guest would show up in the next diff. Paths are given absolute ("/etc/passwd") and resolved
under `root`, so the same scripts scan a guest's "/" or a fake tree in a test, or a snapshot
mounted on the host.

Only GNU find is required (for `-printf`). Under a busybox sh built with standalone applets,
plain `find` is busybox's own (no `-printf`), so the script looks for a find that can.
"""

from __future__ import annotations

import base64
import secrets
import shlex
from collections.abc import Iterator, Sequence

# "/" with -xdev finds whatever an agent creates at top level (/app, /workspace, ...); the
# others are usual separate mounts, scanned on their own only when they are one (see below).
DEFAULT_PATHS: tuple[str, ...] = ("/", "/boot", "/home", "/opt", "/srv", "/usr", "/var")

# Volatile or derived state that changes by itself (logs, caches, timer stamps, the DHCP lease)
# and would bury what an agent did. These are find -path patterns: `*` matches across "/".
# /var/lib/dpkg/info is kept on purpose: its maintainer scripts run as root on the next
# upgrade, so a change there matters even though the packages section covers installs.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/lost+found",
    "/swapfile",
    "/var/tmp",
    "/var/cache",
    "/var/log",
    "/var/backups",
    "/var/lib/apt/lists",
    "/var/lib/apt/periodic",
    "/var/lib/apt/daily_lock",
    "/var/lib/dhcp",
    "/var/lib/dhclient",
    "/var/lib/logrotate",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/timers",
    "/var/lib/systemd/timesync",
    "/var/lib/systemd/coredump",
    "/var/spool/anacron",
    "/root/.cache",
    "/home/*/.cache",
)

MANIFEST_MAGIC = b"VSB-MANIFEST 1 "

# type size mtime ctime inode mode uid gid user group <TAB> path NUL target NUL: only the path
# and the symlink target can hold arbitrary bytes, and neither can hold a NUL.
_FIND_FORMAT = r"%y\t%s\t%T@\t%C@\t%i\t%m\t%U\t%G\t%u\t%g\t%p\0%l\0"
_DPKG_FORMAT = r"${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"
_RPM_FORMAT = r"%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\t%{ARCH}\tii \n"


def _q(value: str) -> str:
    return shlex.quote(value)


def _relative(path: str) -> str:
    """'/etc/x' -> './etc/x', '/' -> '.': the scripts cd into root and use relative names,
    which never start with "-" (no option injection) and come back as find prints them."""
    if not path.startswith("/"):
        raise ValueError(f"paths must be absolute: {path!r}")
    rel = path.strip("/")
    return "./" + rel if rel else "."


def absolute(name: bytes) -> str:
    """A name as the scripts print it ('./etc/x', '.') back to the guest's path ('/etc/x').
    Names that are not UTF-8 survive as surrogate escapes."""
    text = name.decode(errors="surrogateescape")
    return "/" if text == "." else text[1:] if text.startswith("./") else "/" + text


def _is_under(path: str, parent: str) -> bool:
    return parent == "/" or path == parent or path.startswith(parent.rstrip("/") + "/")


def _find_command(start: str, ancestor: str | None, excludes: Sequence[str]) -> str:
    rel = _relative(start)
    patterns = [_relative(e) for e in excludes if _is_under(e, start) and e.strip("/")]
    prune = ""
    if patterns:
        tests = " -o ".join(f"-path {_q(p)}" for p in patterns)
        prune = f"\\( {tests} \\) -prune -o "
    find = f'"$FIND" {_q(rel)} -xdev {prune}-printf {_q(_FIND_FORMAT)}'
    if ancestor is None:
        return f"if [ -e {_q(rel)} ]; then {find}; fi"
    # A nested start point on the same filesystem as its listed ancestor was scanned already.
    same_fs = f'[ "$(stat -c %d {_q(rel)})" = "$(stat -c %d {_q(_relative(ancestor))})" ]'
    return f"if [ -d {_q(rel)} ] && [ ! -h {_q(rel)} ] && ! {same_fs}; then {find}; fi"


def collector_script(
    paths: Sequence[str] = DEFAULT_PATHS,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    root: str = "/",
    *,
    with_systemctl: bool = True,
    with_packages: bool = True,
    with_accounts: bool = True,
) -> str:
    """One read-only sh script printing a state manifest for `manifest.parse()`.

    The document starts with `VSB-MANIFEST 1 <boundary>` and holds sections introduced by
    `\\n--<boundary> <name>\\n`; the boundary is random per script, so no file name or content fakes
    a section. Sections: dpkg / rpm / systemctl (each followed by `rc <exit code>`), passwd,
    group, files (NUL-separated find records), and `end`, whose absence means truncation.
    `with_systemctl=False` skips systemctl, the slowest part (offline it rescans the unit
    directories for every unit: 0.45 s here, against 10 ms for find over /etc); unit
    enablement still comes from the links in /etc/systemd/system.
    `with_packages=False` / `with_accounts=False` leave out the sections that read guest files
    by path (dpkg's database, /etc/passwd, /etc/group): the host-side reader reads those itself
    without following the guest's symlinks (drivers/guest_reader_job.py).
    """
    boundary = secrets.token_hex(8)
    starts = sorted(dict.fromkeys(paths), key=lambda p: (p.count("/"), p))
    finds = []
    for start in starts:
        ancestors = [a for a in starts if a != start and _is_under(start, a)]
        ancestor = max(ancestors, key=len) if ancestors else None
        finds.append(_find_command(start, ancestor, excludes))
    find_lines = "\n".join(finds)
    return f"""\
export LC_ALL=C
B={boundary}
ROOT={_q(root)}
cd "$ROOT" || exit 2
# Under a busybox sh with standalone applets a bare `find` or `rpm` runs busybox's applet
# even when the real tool is on PATH, so look tools up on PATH ourselves.
real() {{
  _ifs=$IFS; IFS=:
  for d in $PATH; do
    if [ -x "$d/$1" ] && [ ! -d "$d/$1" ]; then IFS=$_ifs; echo "$d/$1"; return 0; fi
  done
  IFS=$_ifs; return 1
}}
FIND=
for f in "$(real find)" /usr/bin/find /bin/find; do
  if "$f" . -maxdepth 0 -printf '' 2>/dev/null; then FIND=$f; break; fi
done
if [ -z "$FIND" ]; then echo 'vsb-manifest: needs GNU find (with -printf)' >&2; exit 3; fi
section() {{ printf '\\n--%s %s\\n' "$B" "$1"; }}
printf 'VSB-MANIFEST 1 %s\\n' "$B"
if {"true" if with_packages else "false"} && DPKG=$(real dpkg-query); then
  section dpkg
  "$DPKG" --admindir=./var/lib/dpkg -W -f={_q(_DPKG_FORMAT)}
  section "rc $?"
fi
if {"true" if with_packages else "false"} && RPM=$(real rpm) && "$RPM" --version >/dev/null 2>&1; then
  section rpm
  "$RPM" --root "$ROOT" -qa --qf {_q(_RPM_FORMAT)}
  section "rc $?"
fi
# --root makes systemctl read unit files itself: no running systemd needed (busybox init),
# and the same answer whichever init runs, so two states compare.
if {"true" if with_systemctl else "false"} && SYSTEMCTL=$(real systemctl); then
  section systemctl
  "$SYSTEMCTL" --root="$ROOT" list-unit-files --no-legend --no-pager 2>/dev/null
  section "rc $?"
fi
if {"true" if with_accounts else "false"} && [ -f etc/passwd ]; then section passwd; cat etc/passwd; fi
if {"true" if with_accounts else "false"} && [ -f etc/group ]; then section group; cat etc/group; fi
section files
{find_lines}
section end
"""


# -- hashes ------------------------------------------------------------------------------


def _plain(path: str) -> bool:
    # sha256sum escapes names holding these (GNU) or prints them raw (busybox): either way
    # the line cannot be parsed back, so such files are hashed one by one through stdin.
    return not any(c in path for c in "\n\r\\")


def _encodable(path: str) -> bool:
    # Non-UTF-8 names reach us as surrogate escapes and cannot travel in a str command line.
    try:
        path.encode()
    except UnicodeEncodeError:
        return False
    return True


def hash_script(paths: Sequence[str], root: str = "/") -> str:
    """A read-only script printing the sha256 of each regular file in `paths`, for
    `parse_hashes()`. Missing or unreadable files are skipped. Names that are not valid UTF-8
    are left out (they stay "changed, content unverified" in the diff)."""
    usable = [p for p in dict.fromkeys(paths) if _encodable(p)]
    plain = [_relative(p) for p in usable if _plain(p)]
    odd = [_relative(p) for p in usable if not _plain(p)]
    lines = [f"cd {_q(root)} || exit 2"]
    if plain:
        lines.append("sha256sum -- " + " ".join(_q(p) for p in plain) + " 2>/dev/null")
    if odd:
        # "\0<name>\0<hash>  -\n": a record that cannot be confused with a sha256sum line.
        lines.append(
            'h() { if [ -f "$1" ]; then printf \'\\0%s\\0\' "$1"; '
            'sha256sum < "$1" || echo; fi 2>/dev/null; }'
        )
        lines += [f"h {_q(rel)}" for rel in odd]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def parse_hashes(stdout: bytes) -> dict[str, str]:
    """{absolute path: sha256 hex} from the output of `hash_script()`."""
    hashes: dict[str, str] = {}
    pos = 0
    while pos < len(stdout):
        if stdout[pos] == 0:
            end = stdout.index(b"\0", pos + 1)
            name = stdout[pos + 1 : end]
            nl = stdout.find(b"\n", end + 1)
            nl = len(stdout) if nl < 0 else nl
            digest = stdout[end + 1 : nl].split(b" ", 1)[0]
            pos = nl + 1
        else:
            nl = stdout.find(b"\n", pos)
            nl = len(stdout) if nl < 0 else nl
            line = stdout[pos:nl]
            pos = nl + 1
            if line.startswith(b"\\"):  # GNU escaping, should a name get here anyway
                line = line[1:].replace(b"\\n", b"\n").replace(b"\\r", b"\r")
                line = line.replace(b"\\\\", b"\\")
            digest, name = line[:64], line[66:]
        if len(digest) == 64:
            hashes[absolute(name)] = digest.decode()
    return hashes


# -- contents ----------------------------------------------------------------------------


def content_script(paths: Sequence[str], max_bytes: int, root: str = "/") -> str:
    """A read-only script printing, for each regular file of `paths`, `<name>\\0<base64>\\0`
    with at most `max_bytes + 1` bytes of it (one more than allowed tells "too large")."""
    lines = [
        f"cd {_q(root)} || exit 2",
        'c() { if [ -f "$1" ] && [ ! -h "$1" ]; then printf \'%s\\0\' "$1"; '
        f"head -c {max_bytes + 1} \"$1\" | base64; printf '\\0'; fi; }}",
    ]
    lines += [f"c {_q(_relative(p))}" for p in dict.fromkeys(paths) if _encodable(p)]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def parse_contents(stdout: bytes, max_bytes: int) -> dict[str, bytes]:
    """{absolute path: content} from `content_script()`; files over `max_bytes` are left out."""
    fields = stdout.split(b"\0")
    contents: dict[str, bytes] = {}
    for name, encoded in zip(fields[0:-1:2], fields[1::2], strict=False):
        data = base64.b64decode(b"".join(encoded.split()))
        if len(data) <= max_bytes:
            contents[absolute(name)] = data
    return contents


def batched(paths: Sequence[str], max_chars: int = 100_000) -> Iterator[list[str]]:
    """Split `paths` so that each script built from one batch stays under `max_chars`: one
    SSH command is limited to 120 kB (`sandboxes.remote.ssh.MAX_COMMAND_BYTES`)."""
    batch: list[str] = []
    size = 400  # the scripts' fixed part
    for path in paths:
        cost = len(_q(path)) + 8  # quoted once per script line, see hash_/content_script
        if batch and size + cost > max_chars:
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += cost
    if batch:
        yield batch
