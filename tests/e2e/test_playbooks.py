"""From an agent's change to a verified playbook, on real VMs (the systemd image, so units
really start): generate, syntax-check, replay on a fresh clone of the `from` state, compare
the replica's diff with the agent's, and run it again to prove idempotence.

The agent's change also carries Jinja that would touch a marker file on the worker host, in a
symlink target, a user's comment, home and shell, a group name, a file path and a unit name:
verify, check and apply must reproduce those strings literally (or, where the target's tools
refuse them, say so in the warnings) and never run them (docs/playbooks.md "Guest data is
never a template"). Sharing the module's VMs and runs keeps that nearly free."""

from __future__ import annotations

import base64
import glob
import shlex
import uuid

import pytest
import yaml

from .conftest import api_user
from .test_snapshots import build_deb

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

AGENT_SCRIPT = """set -e
mkdir -p /srv/www
printf '<h1>hello from the agent</h1>\\n' > /srv/www/index.html
printf 'port = 8080\\nroot = /srv/www\\n' > /etc/app.conf
useradd -m -s /bin/bash appuser
chown -R appuser:appuser /srv/www
mkdir -p /srv/assets && for i in $(seq 1 25); do echo "asset $i" > /srv/assets/a$i.css; done
chmod 0640 /srv/assets/a7.css && chown -R appuser:appuser /srv/assets
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


TAG = uuid.uuid4().hex[:10]


def payload(field: str) -> str:
    return "{{ lookup('pipe', 'touch /tmp/vsb-jinja-" + TAG + "-" + field + "') }}"


def component(field: str) -> str:
    """The same, as one file name (no `/`: spelt with format(47)), so a path holds it in one
    component and the playbook needs no task per directory of it."""
    return "{{ lookup('pipe', 'touch %ctmp%cvsb-jinja-" + TAG + "-" + field + "'|format(47,47)) }}"


def host_markers() -> list[str]:
    return sorted(glob.glob(f"/tmp/vsb-jinja-{TAG}-*"))


JINJA_UNIT = component("unit") + ".service"
JINJA = {
    "link": payload("link"),
    "comment": payload("comment"),
    "home": "/home/" + component("home"),
    "shell": "/bin/" + payload("shell"),
    "group": payload("group"),
    "file": "/srv/" + component("file"),
    "wants": f"/etc/systemd/system/multi-user.target.wants/{JINJA_UNIT}",
}
_q = {k: shlex.quote(v) for k, v in JINJA.items()}
JINJA_SCRIPT = f"""
ln -s {_q["link"]} /srv/jinja-link
useradd -m -N -g users -c {_q["comment"]} -d {_q["home"]} -s {_q["shell"]} jinjauser 2>/dev/null
# groupadd refuses such a name: the lines go in directly.
printf '%s:x:4242:\\n' {_q["group"]} >> /etc/group
printf '%s:!::\\n' {_q["group"]} >> /etc/gshadow
echo jinja > {_q["file"]}
ln -s /dev/null {_q["wants"]}
"""
# What a target shows of them: the strings literally, the group absent (groupadd refuses it).
JINJA_PROBE = (
    f"readlink /srv/jinja-link; getent passwd jinjauser | cut -d: -f5-; test -f {_q['file']} && cat {_q['file']};"
    f" readlink {_q['wants']}; getent group {_q['group']} >/dev/null; echo group=$?"
)
JINJA_SEEN = (
    f"{JINJA['link']}\n{JINJA['comment']}:{JINJA['home']}:{JINJA['shell']}\njinja\n/dev/null\n"
)


@pytest.fixture(scope="module")
def agent_box(e2e_stack):
    with e2e_stack.alice.ready_sandbox(
        source_vm_name="debian-base-systemd", agent_id="web-agent"
    ) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def changed(e2e_stack, agent_box, tmp_path_factory):
    api, sid = e2e_stack.alice, agent_box["id"]
    api.snapshot(sid, "p0")
    deb = base64.b64encode(build_deb(tmp_path_factory.mktemp("deb"))).decode()
    result = api.run(sid, AGENT_SCRIPT.format(deb=deb) + JINJA_SCRIPT)
    assert result["exit_code"] == 0, result
    api.snapshot(sid, "p1")
    return sid


def test_it_generates_a_readable_playbook_that_passes_syntax_check(e2e_stack, changed):
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{changed}/playbook?from=p0&to=p1")
    assert status == 200, body
    pb = body["playbook"]
    assert pb["syntax_ok"] is True, pb["syntax_output"]
    assert pb["version"] == 1 and pb["generated"] is True
    tasks = {
        t["name"]: t
        for t in yaml.safe_load(pb["yaml"].split("---\n", 1)[1].replace("!unsafe", ""))[0]["tasks"]
    }
    assert (
        tasks["Write /etc/app.conf"]["ansible.builtin.copy"]["content"]
        == "port = 8080\nroot = /srv/www\n"
    )
    assert tasks["User appuser"]["ansible.builtin.user"]["shell"] == "/bin/bash"
    assert tasks["Package vsb-hello 1.0"]["ansible.builtin.apt"] == {
        "deb": "/root/vsb-hello.deb",
        "state": "present",
    }
    assert tasks["Enable app.service"]["ansible.builtin.systemd_service"]["enabled"] is True
    index = tasks["Write /srv/www/index.html"]["ansible.builtin.copy"]
    assert (index["owner"], index["group"]) == ("appuser", "appuser")
    tree = tasks["Tree /srv/assets (26 entries)"]["ansible.builtin.unarchive"]
    assert tree["dest"] == "/" and any(
        f["name"] == tree["src"][len("files/") :] for f in pb["files"]
    )
    skipped = {s["path"] for s in pb["skipped"]}
    assert {"/etc/passwd", "/usr/share/vsb-hello/hello.txt", "/home/appuser/.bashrc"} <= skipped
    assert "/etc/systemd/system/multi-user.target.wants/app.service" in skipped
    # The guest's Jinja: reproduced as written, or named in the warnings where the target refuses it.
    assert tasks["Link /srv/jinja-link"]["ansible.builtin.file"]["src"] == JINJA["link"]
    assert tasks["User jinjauser"]["ansible.builtin.user"]["comment"] == JINJA["comment"]
    assert f"group {JINJA['group']!r}: groupadd refuses this name" in "\n".join(pb["warnings"])
    assert f"unit {JINJA_UNIT!r} (enabled): systemctl refuses this name" in "\n".join(
        pb["warnings"]
    )
    assert host_markers() == []
    # The same playbook again, as raw YAML, without generating anew.
    import urllib.request

    api = e2e_stack.alice
    req = urllib.request.Request(
        f"{api.base_url}/v1/playbooks/{pb['id']}?raw=1",
        headers={"Authorization": f"Bearer {api.key}"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("application/yaml")
        assert resp.read().decode() == pb["yaml"]


def test_a_replay_on_a_fresh_clone_reproduces_the_change_and_is_idempotent(e2e_stack, changed):
    api = e2e_stack.alice
    status, body = api.post(
        f"/v1/sandboxes/{changed}/playbook/verify",
        {"from": "p0", "to": "p1", "wait": True},
        timeout=1800,
    )
    assert status == 200, body
    op = body["operation"]
    assert op["status"] == "succeeded", op
    result = op["result"]
    print(
        f"\nverify: first run {result['first_run']['hosts']}, second run changed={result['changed_on_second_run']}"
    )
    assert host_markers() == [], "verify ran the guest's Jinja on the host"
    assert result["first_run"]["status"] == "successful", result["first_run"]["failed_tasks"]
    # Everything but the group groupadd refuses (the warnings say so) is reproduced.
    assert result["residual"] == {
        "groups": [{"key": f"added:{JINJA['group']}", "expected": {"gid": 4242}, "got": None}]
    }, result["residual"]
    assert result["reproduces"] is False
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


@pytest.fixture(scope="module")
def operator(e2e_stack):
    """An operator who may register targets, run playbooks against them and edit playbooks."""
    return api_user(
        e2e_stack,
        "e2e-olga",
        ["view_inventory", "add_inventory", "run_inventory", "change_playbook"],
    )


@pytest.fixture(scope="module")
def production(e2e_stack, operator):
    """A 'production' machine: another fresh sandbox, registered by the operator as an
    inventory host."""
    with operator.ready_sandbox(source_vm_name="debian-base-systemd", agent_id="prod-1") as target:
        status, inv = operator.post(
            "/v1/inventories",
            {"name": "prod", "hosts": [{"name": "prod-1", "sandbox_id": target["id"]}]},
        )
        assert status == 201, inv
        yield target, inv["inventory"]


def stream_events(api, run_id: str) -> list[dict]:
    """The run's events as a websocket client sees them, until the run finishes."""
    import json

    import websocket

    ws = websocket.create_connection(
        api.base_url.replace("http", "ws") + f"/ws/playbook-runs/{run_id}/",
        header=[f"Authorization: Bearer {api.key}"],
        origin=api.base_url,
        timeout=600,
    )
    seen = []
    try:
        while True:
            msg = json.loads(ws.recv())
            seen.append(msg)
            if msg["type"] == "finished":
                return seen
    finally:
        ws.close()


@pytest.fixture
def pid(e2e_stack, changed) -> str:
    """The id of the playbook made from the agent's change (p0 to p1)."""
    status, body = e2e_stack.alice.get(f"/v1/sandboxes/{changed}/playbook?from=p0&to=p1")
    assert status == 200, body
    return body["playbook"]["id"]


@pytest.fixture
def apply(production) -> dict:
    """What a check or an apply against production sends."""
    return {"inventory": production[1]["id"]}


def test_an_apply_is_refused_without_approval_and_runs_once_after_it(
    e2e_stack, changed, operator, decider, production, pid, apply
):
    api = e2e_stack.alice
    target, inventory = production
    # Production is the operator's: to the agent whose playbook it is, it does not exist.
    assert api.post(f"/v1/playbooks/{pid}/check", apply)[0] == 404
    assert api.get(f"/v1/inventories/{inventory['id']}")[0] == 404
    status, body = operator.post(f"/v1/playbooks/{pid}/apply", apply)
    assert status == 409 and body["error"]["code"] == "dry_run_required", body
    assert (
        "PRIVATE KEY" not in json_text(inventory)
        and inventory["hosts"][0]["has_private_key"] is False
    )

    status, body = operator.post(f"/v1/playbooks/{pid}/check", {**apply, "wait": True}, timeout=900)
    assert status == 200 and body["run"]["status"] == "successful", body
    assert body["run"]["host_stats"]["prod-1"]["changed"] > 0  # what the apply would change
    assert host_markers() == [], "the dry run ran the guest's Jinja on the host"

    status, body = operator.post(f"/v1/playbooks/{pid}/apply", apply)
    assert status == 409 and body["error"]["code"] == "approval_required", body
    approval = body["approval"]
    assert approval["status"] == "pending" and approval["payload"]["version"] == 1
    assert approval["payload"]["dry_run"]["status"] == "successful"
    assert api.post(f"/v1/approvals/{approval['id']}/approve", {})[0] == 403  # agents never decide
    status, decided = decider.post(
        f"/v1/approvals/{approval['id']}/approve", {"reason": "reviewed"}
    )
    assert status == 200, decided

    status, body = operator.post(
        f"/v1/playbooks/{pid}/apply", {**apply, "approval_id": approval["id"]}
    )
    assert status == 202, body
    run_id = body["run"]["id"]
    events = stream_events(operator, run_id)
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "successful", events[-1]
    seqs = [e["seq"] for e in events if e["type"] == "event"]
    assert seqs == list(range(1, len(seqs) + 1)), "every event, in order"
    status, run = operator.get(f"/v1/playbook-runs/{run_id}")
    assert run["run"]["host_stats"]["prod-1"]["failed"] == 0
    assert run["run"]["host_stats"]["prod-1"]["changed"] > 0
    assert run["run"]["events_count"] == len(seqs)
    assert api.get(f"/v1/playbook-runs/{run_id}/events")[0] == 404

    # Production now matches the agent's sandbox on every changed path.
    check = (
        "sha256sum /etc/app.conf /srv/www/index.html /etc/systemd/system/app.service /root/vsb-hello.deb;"
        " stat -c '%U:%G %a' /srv/www /srv/www/index.html /srv/assets /srv/assets/a7.css;"
        " cat /srv/assets/*.css | sha256sum; id -u appuser; dpkg-query -W vsb-hello;"
        " systemctl is-enabled app.service; test -e /etc/motd; echo motd=$?"
    )
    assert api.run(changed, check)["stdout"] == operator.run(target["id"], check)["stdout"]
    # ...the guest's Jinja included, literally, and it never ran on the host.
    assert host_markers() == [], "the apply ran the guest's Jinja on the host"
    assert api.run(changed, JINJA_PROBE)["stdout"] == JINJA_SEEN + "group=0\n"
    assert operator.run(target["id"], JINJA_PROBE)["stdout"] == JINJA_SEEN + "group=2\n"

    status, body = operator.post(
        f"/v1/playbooks/{pid}/apply", {**apply, "approval_id": approval["id"]}
    )
    assert status == 409 and body["error"]["code"] == "approval_used", body


def test_an_edit_voids_the_approval_and_a_failed_apply_names_task_and_host(
    operator, decider, pid, apply
):
    status, body = operator.post(f"/v1/playbooks/{pid}/apply", apply)
    assert status == 409 and body["error"]["code"] == "approval_required", body
    old = body["approval"]
    assert decider.post(f"/v1/approvals/{old['id']}/approve", {})[0] == 200

    # The operator replaces it with their own maintenance, whose second step fails: short,
    # so the dry run and the apply cost seconds (the generated playbook's own runs are the
    # test above; this one is about the approval and the failure's report).
    edited = operator_playbook(
        "Write a maintenance marker",
        '    ansible.builtin.copy: {dest: /root/maintenance, content: "planned\\n"}',
        "Operator's pre-flight check",
        "    ansible.builtin.command: /bin/false",
        "Never reached",
        "    ansible.builtin.command: /bin/true",
    )
    status, body = operator.post(
        f"/v1/playbooks/{pid}/versions", {"yaml": edited, "note": "pre-flight"}
    )
    assert status == 201 and body["playbook"]["version"] == 2 and body["playbook"]["syntax_ok"], (
        body
    )
    status, body = operator.post(f"/v1/playbooks/{pid}/apply", {**apply, "approval_id": old["id"]})
    assert status == 409 and body["error"]["code"] == "approval_mismatch", body

    status, body = operator.post(f"/v1/playbooks/{pid}/check", {**apply, "wait": True}, timeout=900)
    assert status == 200, body
    status, body = operator.post(f"/v1/playbooks/{pid}/apply", apply)
    fresh = body["approval"]
    assert fresh["payload"]["version"] == 2
    assert decider.post(f"/v1/approvals/{fresh['id']}/approve", {})[0] == 200
    status, body = operator.post(
        f"/v1/playbooks/{pid}/apply",
        {**apply, "approval_id": fresh["id"], "wait": True},
        timeout=900,
    )
    assert status == 200, body
    run = body["run"]
    assert run["status"] == "failed"
    assert run["host_stats"]["prod-1"]["ok"] > 0  # the tasks before it ran
    assert run["failed_tasks"][0]["task"] == "Operator's pre-flight check"
    assert run["failed_tasks"][0]["host"] == "prod-1"
    assert "Operator's pre-flight check" in run["error"] and "prod-1" in run["error"]
    status, body = operator.post(
        f"/v1/playbooks/{pid}/apply", {**apply, "approval_id": fresh["id"]}
    )
    assert status == 409 and body["error"]["code"] == "approval_used", body


def operator_playbook(*name_and_module_lines: str) -> str:
    """A playbook an operator writes by hand: tasks given as (name, module line) pairs."""
    pairs = zip(name_and_module_lines[::2], name_and_module_lines[1::2], strict=True)
    tasks = "".join(f"  - name: {name}\n{module}\n" for name, module in pairs)
    return f"- name: Operator's version\n  hosts: all\n  become: true\n  gather_facts: false\n  tasks:\n{tasks}"


def json_text(value) -> str:
    import json

    return json.dumps(value)


def test_a_running_apply_is_cancelled(operator, decider, pid, apply):
    import time

    slow = operator_playbook("A long maintenance step", "    ansible.builtin.command: sleep 600")
    status, body = operator.post(f"/v1/playbooks/{pid}/versions", {"yaml": slow, "note": "slow"})
    assert status == 201, body
    assert (
        operator.post(f"/v1/playbooks/{pid}/check", {**apply, "wait": True}, timeout=900)[0] == 200
    )
    approval = operator.post(f"/v1/playbooks/{pid}/apply", apply)[1]["approval"]
    assert decider.post(f"/v1/approvals/{approval['id']}/approve", {})[0] == 200
    status, body = operator.post(
        f"/v1/playbooks/{pid}/apply", {**apply, "approval_id": approval["id"]}
    )
    assert status == 202, body
    run_id = body["run"]["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until the sleep has started on the target
        events = operator.get(f"/v1/playbook-runs/{run_id}/events")[1]["events"]
        if any(
            e["event"] == "runner_on_start" and e["task"] == "A long maintenance step"
            for e in events
        ):
            break
        time.sleep(1)
    else:
        raise AssertionError("the slow task never started")
    cancelled_at = time.monotonic()
    status, body = operator.post(f"/v1/playbook-runs/{run_id}/cancel", {})
    assert status == 200, body
    while time.monotonic() - cancelled_at < 60:
        run = operator.get(f"/v1/playbook-runs/{run_id}")[1]["run"]
        if run["status"] != "running":
            break
        time.sleep(0.5)
    assert run["status"] == "canceled", run
    assert time.monotonic() - cancelled_at < 30
    assert operator.post(f"/v1/playbook-runs/{run_id}/cancel", {})[0] == 409
