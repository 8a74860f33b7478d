"""Snapshots on real VMs: restore takes the guest back (memory included) with a working
clock and SSH; a fork branches off with its own host key and machine-id."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def test_it_restores_snapshots_back_and_forth(e2e_stack, sandbox):
    api, sid = e2e_stack.alice, sandbox["id"]
    base = api.snapshot(sid, "base")
    assert base["status"] == "ready" and base["has_memory"] is True
    api.run(
        sid,
        "echo 'listen 8080' > /etc/app.conf; useradd -m carol; rm /etc/issue.net; sleep 1000 &",
    )
    api.snapshot(sid, "after")

    restored = api.restore(sid, "base")
    assert restored["state"] == "ready" and restored["host_key"] == sandbox["host_key"]
    gone = api.run(
        sid,
        "test -e /etc/app.conf; echo $?; id carol 2>&1 | head -c 40; test -e /etc/issue.net; echo $?",
    )
    assert gone["stdout"].splitlines()[0] == "1"
    assert gone["stdout"].splitlines()[-1] == "0"
    # The clock was corrected: within a few seconds of the host's.
    skew = api.run(sid, "date +%s")["stdout"].strip()
    import time

    assert abs(int(skew) - time.time()) < 10

    api.restore(sid, "after")
    back = api.run(
        sid,
        "cat /etc/app.conf; id -u carol; pgrep -f 'sleep [1]000' >/dev/null && echo running",
    )
    assert back["stdout"].splitlines()[0] == "listen 8080"
    assert back["stdout"].splitlines()[-1] == "running", (
        "memory state (a background process) is back"
    )


def test_it_forks_a_sandbox_with_its_own_identity(e2e_stack, sandbox):
    api, sid = e2e_stack.alice, sandbox["id"]
    fork = api.create_sandbox(from_sandbox=sid, from_snapshot="after")
    try:
        assert fork["host_key"] != sandbox["host_key"]
        ids = {}
        for sb in (sandbox, fork):
            out = api.run(sb["id"], "cat /etc/machine-id; cat /etc/app.conf; hostname")[
                "stdout"
            ].split("\n")
            ids[sb["id"]] = out[0]
            assert out[1] == "listen 8080"
            assert out[2] == sb["name"]
        assert ids[sid] != ids[fork["id"]]
        # They run independently: a change in one does not appear in the other.
        api.run(fork["id"], "echo fork-only > /root/f")
        assert api.run(sid, "test -e /root/f; echo $?")["stdout"] == "1\n"
    finally:
        api.destroy_sandbox(fork["id"])


def test_it_answers_404_for_an_unknown_snapshot(e2e_stack, sandbox):
    status, body = e2e_stack.alice.post(f"/v1/sandboxes/{sandbox['id']}/snapshots/nope/restore", {})
    assert status == 404 and "nope" in body["error"]["message"]


def build_deb(tmp_path) -> bytes:
    """A tiny package, built here: the guest has no network and no apt sources."""
    import subprocess

    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/vsb-hello").mkdir(parents=True)
    (root / "usr/share/vsb-hello/hello.txt").write_text("hello from a local package\n")
    (root / "DEBIAN/control").write_text(
        "Package: vsb-hello\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: tests <tests@example.invalid>\nDescription: test package\n"
    )
    out = tmp_path / "vsb-hello.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def test_it_diffs_exactly_what_changed(e2e_stack, sandbox, tmp_path):
    import base64

    api, sid = e2e_stack.alice, sandbox["id"]
    api.snapshot(sid, "d0")
    deb = base64.b64encode(build_deb(tmp_path)).decode()
    script = f"""set -e
printf 'port = 8080\\nworkers = 4\\n' > /etc/app.conf
useradd -m dave
cat > /etc/systemd/system/app.service <<'UNIT'
[Unit]
Description=demo app
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
UNIT
systemctl enable app.service 2>/dev/null || ln -s /etc/systemd/system/app.service /etc/systemd/system/multi-user.target.wants/app.service
echo {deb} | base64 -d > /root/vsb-hello.deb
dpkg -i /root/vsb-hello.deb >/dev/null
rm /root/vsb-hello.deb
rm /etc/motd
echo noise >> /var/log/noise.log
echo noise > /tmp/noise
"""
    assert api.run(sid, script)["exit_code"] == 0
    api.snapshot(sid, "d1")
    status, body = api.get(f"/v1/sandboxes/{sid}/diff?from=d0&to=d1")
    assert status == 200, body
    diff = body["diff"]
    files = {(f["change"], f["path"]) for f in diff["files"]["results"]}
    paths = {p for _, p in files}
    # Exactly the consequences of the script, and nothing from /tmp or /var/log. /etc/app.conf
    # already existed at d0 (the restore test wrote it), so it is modified, not added.
    assert files == {
        ("modified", "/etc/app.conf"),
        ("removed", "/etc/motd"),
        ("added", "/etc/systemd/system/app.service"),
        ("added", "/etc/systemd/system/multi-user.target.wants/app.service"),
        # useradd -m dave
        ("added", "/home/dave"),
        ("added", "/home/dave/.bash_logout"),
        ("added", "/home/dave/.bashrc"),
        ("added", "/home/dave/.profile"),
        *{
            ("modified", f"/etc/{name}{suffix}")
            for name in ("group", "gshadow", "passwd", "shadow", "subgid", "subuid")
            for suffix in ("", "-")
        },
        # dpkg -i vsb-hello.deb
        ("added", "/usr/share/vsb-hello"),
        ("added", "/usr/share/vsb-hello/hello.txt"),
        ("added", "/var/lib/dpkg/info/vsb-hello.list"),
        ("added", "/var/lib/dpkg/info/vsb-hello.md5sums"),
        ("added", "/var/lib/dpkg/status-old"),
        ("modified", "/var/lib/dpkg/status"),
        ("touched", "/var/lib/dpkg/lock"),
        ("touched", "/var/lib/dpkg/lock-frontend"),
        ("touched", "/var/lib/dpkg/triggers/Lock"),
    }, sorted(files)
    assert not any(p.startswith(("/tmp", "/var/log", "/proc", "/run")) for p in paths), paths
    app_conf = next(f for f in diff["files"]["results"] if f["path"] == "/etc/app.conf")
    assert app_conf["sha256"] and "+port = 8080" in (app_conf.get("unified_diff") or ""), app_conf
    assert "-listen 8080" in app_conf["unified_diff"]
    assert [p["name"] for p in diff["packages"]["installed"]] == ["vsb-hello"]
    assert "dave" in [u["name"] for u in diff["users"]["added"]]
    assert "dave" in [g["name"] for g in diff["groups"]["added"]]
    assert "app.service" in [u["name"] for u in diff["units"]["enabled"]]
    assert any("useradd -m dave" in c["command"] for c in diff["commands"])
    print(f"\ndiff d0->d1: {diff['summary']} in {diff['duration_ms']} ms")

    # Restoring d0 undoes every one of those changes; restoring d1 brings them all back.
    probe = (
        "cat /etc/app.conf; id -u dave >/dev/null 2>&1 && echo user || echo no-user; "
        "test -e /etc/systemd/system/multi-user.target.wants/app.service && echo unit || echo no-unit; "
        "dpkg -s vsb-hello >/dev/null 2>&1 && echo pkg || echo no-pkg; "
        "test -e /etc/motd && echo motd || echo no-motd"
    )

    def restored(snapshot: str) -> list[str]:
        api.restore(sid, snapshot)
        return api.run(sid, probe)["stdout"].split("\n")[:-1]

    assert restored("d0") == ["listen 8080", "no-user", "no-unit", "no-pkg", "motd"]
    assert restored("d1") == ["port = 8080", "workers = 4", "user", "unit", "pkg", "no-motd"]

    # A change made over a plain SSH session, not through /command, shows up too.
    from django.conf import settings

    from sandboxes.remote import ssh
    from sandboxes.remote.ca import CertificateAuthority

    credential = CertificateAuthority(settings.VSB["SSH_CA_KEY"]).issue(
        [f"sandbox-{sid.replace('-', '')}"]
    )
    client = ssh.connect(
        ssh.SSHTarget("127.0.0.1", sandbox["ssh_port"], "root", sandbox["host_key"]), credential
    )
    try:
        ssh.run(client, "echo typed-by-hand > /etc/handmade.conf", timeout=30)
    finally:
        client.close()
    status, body = api.get(f"/v1/sandboxes/{sid}/diff?from=d1")
    assert status == 200, body
    changed = {(f["change"], f["path"]) for f in body["diff"]["files"]["results"]}
    assert ("added", "/etc/handmade.conf") in changed, changed
    assert api.run(sid, "virsh 2>/dev/null; true")["exit_code"] == 0


def test_it_refuses_a_diff_with_a_snapshot_of_another_sandbox(e2e_stack, sandbox):
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{sandbox['id']}/diff?from=no-such&to=d1")
    assert status == 404 and "no-such" in body["error"]["message"]
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{sandbox['id']}/diff")
    assert status == 400 and "from" in body["error"]["fields"]


def test_it_recovers_a_restore_interrupted_by_sigkill(e2e_stack, sandbox):
    import signal
    import time

    api, sid = e2e_stack.alice, sandbox["id"]
    status, body = api.post(f"/v1/sandboxes/{sid}/snapshots/d0/restore", {})
    assert status == 202, body
    op_id = body["operation"]["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        op = api.get(f"/v1/operations/{op_id}")[1]
        if op["status"] == "running":
            break
        time.sleep(0.02)
    e2e_stack.worker.kill(signal.SIGKILL)
    e2e_stack.restart_worker()
    op = api.wait_operation(op_id, timeout=180)
    state = api.get(f"/v1/sandboxes/{sid}")[1]["sandbox"]
    assert (op["status"], state["state"]) in {("succeeded", "ready"), ("failed", "error")}, (
        op,
        state,
    )
    if state["state"] == "ready":
        assert (
            api.run(sid, "test -e /etc/app.conf && cat /etc/app.conf")["stdout"] == "listen 8080\n"
        )
    else:
        assert state["error"]


def test_it_keeps_the_sandbox_usable_when_the_worker_dies_during_a_snapshot(e2e_stack, sandbox):
    import signal

    api, sid = e2e_stack.alice, sandbox["id"]
    status, body = api.post(f"/v1/sandboxes/{sid}/snapshots", {"name": "killed"})
    assert status == 202, body
    e2e_stack.worker.kill(signal.SIGKILL)
    e2e_stack.restart_worker()
    op = api.wait_operation(body["operation"]["id"], timeout=120)
    snap = api.get(f"/v1/sandboxes/{sid}/snapshots/killed")[1]
    assert (op["status"], snap["status"]) in {("succeeded", "ready"), ("failed", "failed")}, (
        op,
        snap,
    )
    assert api.get(f"/v1/sandboxes/{sid}")[1]["sandbox"]["state"] == "ready"
    assert api.run(sid, "echo still-here")["stdout"] == "still-here\n"
