"""Snapshots on real VMs: restore takes the guest back (memory included) with a working
clock and SSH; a fork branches off with its own host key and machine-id."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def run(api, sandbox_id: str, command: str) -> dict:
    status, body = api.post(f"/v1/sandboxes/{sandbox_id}/command", {"command": command})
    assert status == 200, body
    return body["command"]


def snapshot(api, sandbox_id: str, name: str) -> dict:
    status, body = api.post(f"/v1/sandboxes/{sandbox_id}/snapshots", {"name": name, "wait": True})
    assert status == 201, body
    return body["snapshot"]


def restore(api, sandbox_id: str, name: str) -> dict:
    status, body = api.post(f"/v1/sandboxes/{sandbox_id}/snapshots/{name}/restore", {"wait": True})
    assert status == 200, body
    return body["sandbox"]


@pytest.fixture(scope="module")
def sandbox(e2e_stack):
    api = e2e_stack.alice
    status, body = api.post("/v1/sandboxes", {"source_vm_name": "debian-base", "wait_for_ip": True})
    assert status == 201, body
    yield body["sandbox"]
    status, body = api.delete(f"/v1/sandboxes/{body['sandbox']['id']}")
    if status == 202:
        api.wait_operation(body["operation"]["id"])


def test_it_restores_snapshots_back_and_forth(e2e_stack, sandbox):
    api, sid = e2e_stack.alice, sandbox["id"]
    base = snapshot(api, sid, "base")
    assert base["status"] == "ready" and base["has_memory"] is True
    run(
        api,
        sid,
        "echo 'listen 8080' > /etc/app.conf; useradd -m carol; rm /etc/issue.net; sleep 1000 &",
    )
    snapshot(api, sid, "after")

    restored = restore(api, sid, "base")
    assert restored["state"] == "ready" and restored["host_key"] == sandbox["host_key"]
    gone = run(
        api,
        sid,
        "test -e /etc/app.conf; echo $?; id carol 2>&1 | head -c 40; test -e /etc/issue.net; echo $?",
    )
    assert gone["stdout"].splitlines()[0] == "1"
    assert gone["stdout"].splitlines()[-1] == "0"
    # The clock was corrected: within a few seconds of the host's.
    skew = run(api, sid, "date +%s")["stdout"].strip()
    import time

    assert abs(int(skew) - time.time()) < 10

    restore(api, sid, "after")
    back = run(
        api,
        sid,
        "cat /etc/app.conf; id -u carol; pgrep -f 'sleep [1]000' >/dev/null && echo running",
    )
    assert back["stdout"].splitlines()[0] == "listen 8080"
    assert back["stdout"].splitlines()[-1] == "running", (
        "memory state (a background process) is back"
    )


def test_it_forks_a_sandbox_with_its_own_identity(e2e_stack, sandbox):
    api, sid = e2e_stack.alice, sandbox["id"]
    status, body = api.post(
        "/v1/sandboxes", {"from_sandbox": sid, "from_snapshot": "after", "wait_for_ip": True}
    )
    assert status == 201, body
    fork = body["sandbox"]
    try:
        assert fork["host_key"] != sandbox["host_key"]
        ids = {}
        for sb in (sandbox, fork):
            out = run(api, sb["id"], "cat /etc/machine-id; cat /etc/app.conf; hostname")[
                "stdout"
            ].split("\n")
            ids[sb["id"]] = out[0]
            assert out[1] == "listen 8080"
            assert out[2] == sb["name"]
        assert ids[sid] != ids[fork["id"]]
        # They run independently: a change in one does not appear in the other.
        run(api, fork["id"], "echo fork-only > /root/f")
        assert run(api, sid, "test -e /root/f; echo $?")["stdout"] == "1\n"
    finally:
        status, body = api.delete(f"/v1/sandboxes/{fork['id']}")
        assert status == 202
        assert api.wait_operation(body["operation"]["id"])["status"] == "succeeded"


def test_it_answers_404_for_an_unknown_snapshot(e2e_stack, sandbox):
    status, body = e2e_stack.alice.post(f"/v1/sandboxes/{sandbox['id']}/snapshots/nope/restore", {})
    assert status == 404 and "nope" in body["error"]["message"]
