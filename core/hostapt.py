"""The KVM host's own apt configuration: its Debian mirrors and its apt proxy.

The default egress allow-list of every sandbox is the Debian mirror(s) this host itself uses, and
the guest image's debootstrap mirror and `/etc/apt/sources.list` come from the same place, so no
mirror name is written anywhere in the project. Only the host's *Debian* entries count: a vendor's
repository on the host (an SDK, a runtime) must not leak into guests or into the default policy.

Stdlib only, no Django: scripts/build-guest-image.sh runs it as a script:

    python3 core/hostapt.py sources-list bookworm   # one-line sources.list for the guest
    python3 core/hostapt.py mirror bookworm         # the first Debian mirror, for debootstrap
    python3 core/hostapt.py hosts                   # host:port of each Debian mirror
    python3 core/hostapt.py proxy                   # the host's apt proxy, if any

`--root DIR` reads DIR/etc/apt/... and DIR/etc/os-release instead of the real ones (tests).

What apt reads and this module understands: `etc/apt/sources.list` and
`etc/apt/sources.list.d/*.list` (one-line style: `deb [opt=v ...] URI SUITE [COMPONENT...]`) and
`etc/apt/sources.list.d/*.sources` (deb822 stanzas: Types, URIs, Suites, Components, Signed-By,
Enabled). Files apt ignores (other extensions, odd names) are ignored here too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Debian's own archive components; a repository with others is not Debian's.
DEBIAN_COMPONENTS = frozenset({"main", "contrib", "non-free", "non-free-firmware"})
# `bookworm`, `bookworm-updates`, `bookworm-security`, `bookworm-backports`, `buster/updates`.
SUITE_RE = re.compile(r"^(?P<codename>[a-z]+)(?P<suffix>-updates|-security|-backports|/updates)?$")
# What apt accepts as a file name in sources.list.d (others are skipped with a notice).
PART_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\.(list|sources)$")
MAX_FILE_BYTES = 1 << 20  # a sources file bigger than this is not a sources file
APT_CONFIG_TIMEOUT = 10.0
APT_CONFIG_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class Entry:
    """One repository line: one-line style gives one per line, deb822 one per URI of a stanza."""

    types: tuple[str, ...]  # "deb", "deb-src"
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: tuple[
        str, ...
    ] = ()  # keyring paths or fingerprints; ("<embedded>",) for a key block
    source: str = ""  # the file it came from, for messages

    def is_debian(self, codename: str | None) -> bool:
        """Debian's archive: signed by a debian-archive keyring or, without Signed-By, only
        suites of `codename`'s family and only Debian's components."""
        if self.signed_by:
            return all(_is_debian_keyring(k) for k in self.signed_by)
        if codename is None or not self.suites:
            return False
        return all(_family(s) == codename for s in self.suites) and set(self.components) <= (
            DEBIAN_COMPONENTS
        )


def _is_debian_keyring(key: str) -> bool:
    return Path(key).name.startswith("debian-archive-") and key.endswith((".gpg", ".asc"))


def _family(suite: str) -> str | None:
    m = SUITE_RE.match(suite)
    return m["codename"] if m else None


# --- parsing ---------------------------------------------------------------------------------


def parse_one_line(text: str, source: str = "") -> list[Entry]:
    """`sources.list` style. Comments run from `#` to the end of the line; options sit in
    `[ ... ]` after the type; lines that do not parse are skipped (apt would refuse them)."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            continue
        options: dict[str, str] = {}
        rest = rest.strip()
        if rest.startswith("["):
            inside, sep, rest = rest[1:].partition("]")
            if not sep:
                continue
            for opt in inside.split():
                key, eq, value = opt.partition("=")
                if eq:
                    options[key.lower().rstrip("+-")] = value
        words = rest.split()
        if len(words) < 2:
            continue
        uri, suite, *components = words
        if options.get("enabled", "yes").lower() == "no":
            continue
        signed = tuple(k for k in options.get("signed-by", "").split(",") if k)
        entries.append(Entry((kind,), uri, (suite,), tuple(components), signed, source))
    return entries


def _stanzas(text: str) -> Iterable[dict[str, str]]:
    fields: dict[str, str] = {}
    last = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif raw[0] in " \t":
            if last is not None:  # a continuation line (e.g. an embedded key block)
                fields[last] += "\n" + raw.strip()
        else:
            key, sep, value = raw.partition(":")
            if sep:
                last = key.strip().lower()
                fields[last] = value.strip()
    if fields:
        yield fields


def parse_deb822(text: str, source: str = "") -> list[Entry]:
    """`*.sources` style: stanzas separated by blank lines; `Enabled: no` stanzas are skipped;
    each URI of a stanza gives one Entry with all its types, suites and components."""
    entries = []
    for f in _stanzas(text):
        if f.get("enabled", "yes").strip().lower() == "no":
            continue
        types = tuple(t for t in f.get("types", "").split() if t in ("deb", "deb-src"))
        suites = tuple(f.get("suites", "").split())
        if not types or not suites:
            continue
        signed = f.get("signed-by", "")
        keys = ("<embedded>",) if "\n" in signed or "BEGIN PGP" in signed else tuple(signed.split())
        components = tuple(f.get("components", "").split())
        for uri in f.get("uris", "").split():
            entries.append(Entry(types, uri, suites, components, keys, source))
    return entries


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE_BYTES:
        print(f"hostapt: {path} is over {MAX_FILE_BYTES} bytes, skipped", file=sys.stderr)
        return None
    return data.decode("utf-8", errors="replace")


def host_sources(root: Path | str = "/") -> list[Entry]:
    """Every enabled entry of the host's apt sources, in apt's order (sources.list first, then
    sources.list.d sorted by name)."""
    apt = Path(root) / "etc" / "apt"
    entries = []
    main = _read(apt / "sources.list")
    if main is not None:
        entries += parse_one_line(main, str(apt / "sources.list"))
    parts = apt / "sources.list.d"
    names = sorted(p.name for p in parts.iterdir()) if parts.is_dir() else []
    for name in names:
        if not PART_NAME_RE.match(name):
            continue
        text = _read(parts / name)
        if text is None:
            continue
        parse = parse_one_line if name.endswith(".list") else parse_deb822
        entries += parse(text, str(parts / name))
    return entries


def host_codename(root: Path | str = "/") -> str | None:
    """VERSION_CODENAME from the host's os-release, if it has one."""
    text = _read(Path(root) / "etc" / "os-release") or ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "VERSION_CODENAME":
            value = value.strip().strip("\"'")
            return value if re.fullmatch(r"[a-z]+", value) else None
    return None


# --- what the project uses -------------------------------------------------------------------


def debian_sources(codename: str | None = None, root: Path | str = "/") -> list[Entry]:
    """The host's Debian entries (see Entry.is_debian). `codename` is the family that counts for
    entries without Signed-By; None means the host's own (os-release)."""
    family = codename or host_codename(root)
    return [e for e in host_sources(root) if e.is_debian(family)]


def mirror_hosts(root: Path | str = "/") -> list[tuple[str, int]]:
    """(host, port) of each http/https URI of the host's Debian entries, in order, once each:
    the default egress allow-list."""
    found: list[tuple[str, int]] = []
    for entry in debian_sources(root=root):
        parts = urlsplit(entry.uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            continue
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port that is not a number
            continue
        if (parts.hostname, port) not in found:
            found.append((parts.hostname, port))
    return found


def _guest_suite(suite: str, codename: str) -> str:
    """The host's suite renamed into the guest's release: a host on another release still lends
    its mirrors (`trixie-security` becomes `bookworm-security` for a bookworm guest)."""
    m = SUITE_RE.match(suite)
    return codename + (m["suffix"] or "") if m else suite


def _guest_entries(codename: str, root: Path | str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(uri, suite, components) for the guest, `deb` only, http/https only, once each."""
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for entry in debian_sources(codename, root):
        if "deb" not in entry.types or urlsplit(entry.uri).scheme not in ("http", "https"):
            continue
        components = tuple(c for c in entry.components if c in DEBIAN_COMPONENTS) or ("main",)
        for suite in entry.suites:
            row = (entry.uri, _guest_suite(suite, codename), components)
            if row not in out:
                out.append(row)
    return out


def guest_sources_list(codename: str, root: Path | str = "/") -> str:
    """A one-line style sources.list for a `codename` guest with the host's Debian URIs, suites
    and components; empty when the host has no Debian entry."""
    rows = _guest_entries(codename, root)
    if not rows:
        return ""
    lines = ["# From the KVM host's apt sources (virsh-sandbox, core/hostapt.py)."]
    lines += [f"deb {uri} {suite} {' '.join(comps)}" for uri, suite, comps in rows]
    return "\n".join(lines) + "\n"


def debootstrap_mirror(codename: str, root: Path | str = "/") -> str | None:
    """The first Debian URI that carries `codename` itself (not only -updates/-security)."""
    for uri, suite, _ in _guest_entries(codename, root):
        if suite == codename:
            return uri
    return None


def parse_apt_proxy(dump: str) -> str | None:
    """`Acquire::http::Proxy "URL";` from `apt-config dump` output; DIRECT/false mean none."""
    for line in dump.splitlines():
        key, _, value = line.strip().partition(" ")
        if key.lower() != "acquire::http::proxy":
            continue
        value = value.strip().rstrip(";").strip().strip('"')
        if value and value.lower() not in ("direct", "false"):
            return value
    return None


def apt_proxy(command: Sequence[str] = ("apt-config", "dump")) -> str | None:
    """The host's own apt HTTP proxy (apt-config, run without a shell), or None."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, timeout=APT_CONFIG_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return parse_apt_proxy(done.stdout[:APT_CONFIG_MAX_BYTES].decode("utf-8", errors="replace"))


# --- command line ----------------------------------------------------------------------------

USAGE = "usage: hostapt.py [--root DIR] {sources-list CODENAME | mirror CODENAME | hosts | proxy}"


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    root = "/"
    if args[:1] == ["--root"] and len(args) >= 2:
        root, args = args[1], args[2:]
    match args:
        case ["sources-list", codename]:
            text = guest_sources_list(codename, root)
            if not text:
                print("hostapt: no Debian entry in the host's apt sources", file=sys.stderr)
                return 1
            sys.stdout.write(text)
        case ["mirror", codename]:
            uri = debootstrap_mirror(codename, root)
            if uri is None:
                print(
                    f"hostapt: no Debian mirror for {codename} in the host's apt sources",
                    file=sys.stderr,
                )
                return 1
            print(uri)
        case ["hosts"]:
            for host, port in mirror_hosts(root):
                print(f"{host}:{port}")
        case ["proxy"]:
            proxy = apt_proxy()
            if proxy is None:
                return 1
            print(proxy)
        case _:
            print(USAGE, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
