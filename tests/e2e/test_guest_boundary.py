"""Root inside a real guest attacks the host through what the host reads from its disk: a
diff and a playbook. Everything below is planted from inside the VM; the host must report
each entry as what it is, finish in bounded time, and read nothing of its own."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def run(api, sandbox_id: str, command: str) -> dict:
    """A command that must succeed in the guest."""
    command = api.run(sandbox_id, command)
    assert command["exit_code"] == 0, command
    return command


def diff(api, sandbox_id: str, a: str, b: str) -> dict:
    status, body = api.get(f"/v1/sandboxes/{sandbox_id}/diff?from={a}&to={b}&limit=1000")
    assert status == 200, body
    return body["diff"]


@pytest.fixture(scope="module")
def host_ca_dir(e2e_stack):
    """The host's SSH CA directory (the worker created the key when it booted the guest)."""
    path = Path(settings.VSB["SSH_CA_KEY"])
    assert path.exists(), "the worker creates the CA before it boots a guest"
    return path.parent


def test_a_snapshot_taken_again_under_the_same_name_gets_its_own_diff(
    e2e_stack, sandbox, host_ca_dir
):
    api, sid = e2e_stack.alice, sandbox["id"]
    api.snapshot(sid, "s-base")
    # First state: /srv/keys is a real directory holding a file named like the CA key.
    run(api, sid, "mkdir -p /srv/keys && echo harmless > /srv/keys/ca")
    api.snapshot(sid, "s-next")
    first = diff(api, sid, "s-base", "s-next")
    assert "/srv/keys/ca" in {r["path"] for r in first["files"]["results"]}

    # Same name, another state: the directory became a symlink to the host's CA directory.
    status, body = api.delete(f"/v1/sandboxes/{sid}/snapshots/s-next")
    assert status == 202, body
    assert api.wait_operation(body.get("operation", body)["id"])["status"] == "succeeded"
    run(api, sid, f"rm -rf /srv/keys && ln -s {host_ca_dir} /srv/keys && echo new > /srv/other")
    api.snapshot(sid, "s-next")
    second = diff(api, sid, "s-base", "s-next")
    entries = {r["path"]: r for r in second["files"]["results"]}
    assert second["id"] != first["id"]
    assert entries["/srv/keys"]["type"] == "l" and "/srv/other" in entries
    assert "/srv/keys/ca" not in entries

    # A playbook made from that state reads nothing behind the link either.
    status, body = api.get(f"/v1/sandboxes/{sid}/playbook?from=s-base&to=s-next")
    assert status == 200, body
    ca_key = Path(settings.VSB["SSH_CA_KEY"]).read_text()
    secret_line = ca_key.splitlines()[1]
    everything = json.dumps(second) + json.dumps(body)
    assert secret_line not in everything


def test_hostile_entries_are_reported_as_what_they_are_in_bounded_time(
    e2e_stack, sandbox, host_ca_dir
):
    api, sid = e2e_stack.alice, sandbox["id"]
    api.snapshot(sid, "h-before")
    run(
        api,
        sid,
        f"ln -s {host_ca_dir} /etc/hostca; "
        "ln -s /dev/zero /etc/skel/x; mknod /etc/skel/tty0 c 4 0; "
        "mv /var/lib/dpkg/status /var/lib/dpkg/status.real && mkfifo /var/lib/dpkg/status; "
        "truncate -s 2G /srv/sparse; printf 'odd\\n' > \"/srv/new$(printf '\\nline')\"; "
        "useradd -m dora; sync",
    )
    api.snapshot(sid, "h-after")
    started = time.monotonic()
    found = diff(api, sid, "h-before", "h-after")
    assert time.monotonic() - started < 120
    entries = {r["path"]: r for r in found["files"]["results"]}
    assert entries["/etc/hostca"]["type"] == "l"
    assert entries["/etc/skel/x"]["type"] == "l" and entries["/etc/skel/x"]["target"] == "/dev/zero"
    assert entries["/etc/skel/tty0"]["type"] == "c"
    assert entries["/var/lib/dpkg/status"]["type"] == "p"
    assert (
        entries["/srv/sparse"]["size"] == 2 << 30 and entries["/srv/sparse"]["unified_diff"] is None
    )
    assert "/srv/new\nline" in entries
    assert [u["name"] for u in found["users"]["added"]] == ["dora"]

    started = time.monotonic()
    status, body = api.get(f"/v1/sandboxes/{sid}/playbook?from=h-before&to=h-after")
    assert status == 200, body
    assert time.monotonic() - started < 180
    secret_line = Path(settings.VSB["SSH_CA_KEY"]).read_text().splitlines()[1]
    assert secret_line not in json.dumps(found) + json.dumps(body)
    # The host kept no mount, loop device or scratch copy of the guest.
    assert "vsb-read" not in Path("/proc/mounts").read_text()
    assert not list(Path(settings.VSB["SANDBOX_DIR"]).glob("*/.vsb-read-*"))
