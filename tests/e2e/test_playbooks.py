"""From an agent's change to a verified playbook, on real VMs (the systemd image, so units
really start): generate, syntax-check, replay on a fresh clone of the `from` state, compare
the replica's diff with the agent's, and run it again to prove idempotence."""

from __future__ import annotations

import base64

import pytest
import yaml

from .test_snapshots import build_deb, run, snapshot

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

AGENT_SCRIPT = """set -e
mkdir -p /srv/www
printf '<h1>hello from the agent</h1>\\n' > /srv/www/index.html
printf 'port = 8080\\nroot = /srv/www\\n' > /etc/app.conf
useradd -m -s /bin/bash appuser
chown -R appuser:appuser /srv/www
cat > /etc/systemd/system/app.service <<'UNIT'
[Unit]
Description=demo web app
[Service]
User=appuser
ExecStart=/usr/bin/python3 -m http.server 8080 --directory /srv/www
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now app.service
echo {deb} | base64 -d > /root/vsb-hello.deb
dpkg -i /root/vsb-hello.deb >/dev/null
"""


@pytest.fixture(scope="module")
def agent_box(e2e_stack):
    api = e2e_stack.alice
    status, body = api.post(
        "/v1/sandboxes",
        {"source_vm_name": "debian-base-systemd", "agent_id": "web-agent", "wait_for_ip": True},
    )
    assert status == 201, body
    yield body["sandbox"]
    status, body = api.delete(f"/v1/sandboxes/{body['sandbox']['id']}")
    if status == 202:
        api.wait_operation(body["operation"]["id"])


@pytest.fixture(scope="module")
def changed(e2e_stack, agent_box, tmp_path_factory):
    api, sid = e2e_stack.alice, agent_box["id"]
    snapshot(api, sid, "p0")
    deb = base64.b64encode(build_deb(tmp_path_factory.mktemp("deb"))).decode()
    result = run(api, sid, AGENT_SCRIPT.format(deb=deb))
    assert result["exit_code"] == 0, result
    snapshot(api, sid, "p1")
    return sid


def test_it_generates_a_readable_playbook_that_passes_syntax_check(e2e_stack, changed):
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{changed}/playbook?from=p0&to=p1")
    assert status == 200, body
    pb = body["playbook"]
    assert pb["syntax_ok"] is True, pb["syntax_output"]
    assert pb["version"] == 1 and pb["generated"] is True
    tasks = {t["name"]: t for t in yaml.safe_load(pb["yaml"].split("---\n", 1)[1].replace("!unsafe", ""))[0]["tasks"]}
    assert tasks["Write /etc/app.conf"]["ansible.builtin.copy"]["content"] == "port = 8080\nroot = /srv/www\n"
    assert tasks["User appuser"]["ansible.builtin.user"]["shell"] == "/bin/bash"
    assert tasks["Package vsb-hello 1.0"]["ansible.builtin.apt"] == {"deb": "/root/vsb-hello.deb", "state": "present"}
    assert tasks["Enable app.service"]["ansible.builtin.systemd_service"]["enabled"] is True
    index = tasks["Write /srv/www/index.html"]["ansible.builtin.copy"]
    assert (index["owner"], index["group"]) == ("appuser", "appuser")
    skipped = {s["path"] for s in pb["skipped"]}
    assert {"/etc/passwd", "/usr/share/vsb-hello/hello.txt", "/home/appuser/.bashrc"} <= skipped
    assert "/etc/systemd/system/multi-user.target.wants/app.service" in skipped
    # The same playbook again, as raw YAML, without generating anew.
    import urllib.request

    api = e2e_stack.alice
    req = urllib.request.Request(
        f"{api.base_url}/v1/playbooks/{pb['id']}?raw=1", headers={"Authorization": f"Bearer {api.key}"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("application/yaml")
        assert resp.read().decode() == pb["yaml"]


def test_a_replay_on_a_fresh_clone_reproduces_the_change_and_is_idempotent(e2e_stack, changed):
    api = e2e_stack.alice
    status, body = api.post(
        f"/v1/sandboxes/{changed}/playbook/verify", {"from": "p0", "to": "p1", "wait": True}, timeout=1800
    )
    assert status == 200, body
    op = body["operation"]
    assert op["status"] == "succeeded", op
    result = op["result"]
    print(f"\nverify: first run {result['first_run']['hosts']}, second run changed={result['changed_on_second_run']}")
    assert result["first_run"]["status"] == "successful", result["first_run"]["failed_tasks"]
    assert result["residual"] == {}, result["residual"]
    assert result["reproduces"] is True
    assert result["idempotent"] is True and result["changed_on_second_run"] == 0
    # The replica is gone.
    status, listing = api.get("/v1/sandboxes?agent_id=verify:web-agent")
    assert all(s["state"] in ("destroying", "destroyed") for s in listing["results"]), listing


def test_playbook_errors_are_4xx_naming_the_field(e2e_stack, changed):
    api = e2e_stack.alice
    status, body = api.get(f"/v1/sandboxes/{changed}/playbook?from=p0")
    assert status == 400 and "to" in body["error"]["fields"]
    status, body = api.get(f"/v1/sandboxes/{changed}/playbook?from=p0&to=now")
    assert status == 400 and "snapshot" in body["error"]["message"]
    status, body = api.get(f"/v1/sandboxes/{changed}/playbook?from=p0&to=nope")
    assert status == 404 and "nope" in body["error"]["message"]
    status, body = e2e_stack.bob.get(f"/v1/sandboxes/{changed}/playbook?from=p0&to=p1")
    assert status == 404
