"""Does a replay reproduce the agent's change? Compare two diffs: the agent's (from -> to)
and the replica's (the same `from` state -> after the playbook). Pure: no Django, no I/O.

Compared: each changed path with its kind of change, type, mode, owner, group, content hash
and link target; packages with versions; enabled/disabled/masked units; users and groups
with their ids, home and shell. Not compared: timestamps ("touched"), the account files'
bytes (a password-change date or a shadow field may differ; the users/groups sections say
what matters), and the residue of running Ansible itself."""

from __future__ import annotations

from typing import Any

ACCOUNT_FILES = {
    f"/etc/{name}{suffix}"
    for name in ("passwd", "shadow", "group", "gshadow", "subuid", "subgid")
    for suffix in ("", "-")
}
# dpkg's backups and journal are written differently by `dpkg -i` and by apt's frontend.
DPKG_NOISE = {"/var/lib/dpkg/status-old", "/var/lib/dpkg/status", "/var/lib/dpkg/diversions-old"}


def _ignored(path: str) -> bool:
    return (
        "/.ansible/" in path
        or path.endswith("/.ansible")
        or path in DPKG_NOISE
        or path.startswith("/var/lib/apt/")
        or path.startswith("/var/lib/dpkg/triggers/")
        or path.startswith("/var/lib/systemd/deb-systemd-helper-enabled/")
    )


def _file_key(rec: dict, change: str) -> dict:
    key = {"change": change, "type": rec.get("type")}
    for name in ("mode", "owner", "group", "target"):
        if rec.get(name) is not None:
            key[name] = rec[name]
    if rec.get("type") == "f" and change != "removed" and rec["path"] not in ACCOUNT_FILES:
        key["sha256"] = rec.get("sha256")
    return key


def _files(diff: dict) -> dict[str, dict]:
    found = {}
    for change in ("added", "removed", "modified"):
        for rec in diff.get("files", {}).get(change, []):
            if not _ignored(rec["path"]):
                found[rec["path"]] = _file_key(rec, change)
    return found


def _named(
    diff: dict, section: str, kinds: tuple[str, ...], fields: tuple[str, ...]
) -> dict[str, dict]:
    found = {}
    for kind in kinds:
        for rec in diff.get(section, {}).get(kind, []):
            found[f"{kind}:{rec['name']}"] = {f: rec.get(f) for f in fields}
    return found


def compare(agent: dict, replica: dict) -> dict[str, Any]:
    """{reproduces: bool, residual: {files, packages, units, users, groups}} where each residual
    entry says what the agent's diff has (`expected`) and what the replay produced (`got`)."""
    residual: dict[str, list] = {}
    sections = {
        "files": (_files(agent), _files(replica)),
        "packages": (
            _named(
                agent,
                "packages",
                ("installed", "removed", "upgraded"),
                ("version", "new_version", "arch"),
            ),
            _named(
                replica,
                "packages",
                ("installed", "removed", "upgraded"),
                ("version", "new_version", "arch"),
            ),
        ),
        "units": (
            _named(agent, "units", ("enabled", "disabled", "masked", "unmasked"), ()),
            _named(replica, "units", ("enabled", "disabled", "masked", "unmasked"), ()),
        ),
        "users": (
            _named(agent, "users", ("added", "removed"), ("uid", "gid", "home", "shell")),
            _named(replica, "users", ("added", "removed"), ("uid", "gid", "home", "shell")),
        ),
        "groups": (
            _named(agent, "groups", ("added", "removed"), ("gid",)),
            _named(replica, "groups", ("added", "removed"), ("gid",)),
        ),
    }
    for section, (want, got) in sections.items():
        diffs = []
        for key in sorted(want.keys() | got.keys()):
            if want.get(key) != got.get(key):
                diffs.append({"key": key, "expected": want.get(key), "got": got.get(key)})
        if diffs:
            residual[section] = diffs
    return {"reproduces": not residual, "residual": residual}
