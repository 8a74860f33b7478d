"""The original README's demo, through the SDK, on the systemd image with only the source
name changed: the agent installs nginx from the KVM host's own Debian mirror through the
egress proxy; then the review the demo describes: nginx serves its page, the diff lists the
packages and the unit, the playbook installs nginx by name (no .deb shipped), and replay
verification reproduces it on a fresh replica behind the same proxy, with changed=0 on its
second run. (`certbot` and `ufw` are not in the image and there is no public DNS here: those
two demo lines fail in the guest, as they would on any host without them.)"""

from __future__ import annotations

import time

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


class PlaybookLoader(yaml.SafeLoader):
    """Reads a generated playbook: guest data in it is tagged `!unsafe` (never a template)."""


PlaybookLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


@pytest.fixture(scope="module")
def client(e2e_stack, monkeypatch_module):
    from virsh_sandbox import VirshSandbox

    monkeypatch_module.setenv("VIRSH_SANDBOX_API_KEY", e2e_stack.alice.key)
    # The demo's second URL (the original's tmux client) is accepted and unused.
    return VirshSandbox(e2e_stack.alice.base_url, "http://localhost:8081")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_readme_demo_installs_nginx_through_the_proxy_and_the_playbook_replays_it(
    client, e2e_stack
):
    api, timings = e2e_stack.alice, {}
    started = time.monotonic()
    # ---- the demo, line for line (source name aside) ---------------------------------------
    sandbox = client.sandbox.create_sandbox(
        source_vm_name="debian-base-systemd",
        agent_id="nginx-setup-agent",
        auto_start=True,
        wait_for_ip=True,
    ).sandbox
    try:
        # Not in the demo: the review needs the state before the agent's work.
        client.sandbox.create_snapshot(sandbox.id, name="clean")
        t0 = time.monotonic()
        install = client.sandbox.run_sandbox_command(
            sandbox.id, "apt update && apt install -y nginx"
        )
        timings["apt update && apt install -y nginx"] = time.monotonic() - t0
        assert install.exit_code == 0, install.stderr[-2000:]
        enable = client.sandbox.run_sandbox_command(sandbox.id, "systemctl enable nginx")
        assert enable.exit_code == 0, enable.stderr
        ufw = client.sandbox.run_sandbox_command(sandbox.id, "ufw allow 80/tcp")
        assert ufw.exit_code == 127  # not installed in this image
        client.sandbox.create_snapshot(sandbox.id, name="nginx-installed")
        certbot = client.sandbox.run_sandbox_command(sandbox.id, "certbot --nginx -d example.com")
        assert certbot.exit_code != 0
        client.sandbox.create_snapshot(sandbox.id, name="nginx-configured")

        # ---- nginx serves its page ------------------------------------------------------------
        start = client.sandbox.run_sandbox_command(sandbox.id, "systemctl start nginx")
        assert start.exit_code == 0, start.stderr
        # bash's own /dev/tcp: no curl to install (an apt run under TCG costs half a minute).
        curl = client.sandbox.run_sandbox_command(
            sandbox.id,
            "bash -c \"exec 3<>/dev/tcp/127.0.0.1/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3\"",
        )
        assert "Welcome to nginx!" in curl.stdout, (curl.stdout[-500:], curl.stderr[-500:])

        # Every fetch went through the proxy, to the host's mirror, and was logged.
        log = client.sandbox.list_egress_log(sandbox.id, limit=200)
        assert log.connections and all(c.allowed for c in log.connections), log
        assert {c.rule.split()[0] for c in log.connections} == {"host"}  # host apt mirror
        assert sum(c.bytes_down for c in log.connections) > 500_000

        # ---- the review: diff, playbook, replay ----------------------------------------------
        status, body = api.get(f"/v1/sandboxes/{sandbox.id}/diff?from=clean&to=nginx-installed")
        assert status == 200, body
        diff = body["diff"]
        installed = {p["name"]: p for p in diff["packages"]["installed"]}
        assert {"nginx", "nginx-common"} <= set(installed), sorted(installed)
        units = {u["name"]: u for u in diff["units"].get("enabled", [])}
        assert "nginx.service" in units, diff["units"]

        status, body = api.get(f"/v1/sandboxes/{sandbox.id}/playbook?from=clean&to=nginx-installed")
        assert status == 200, body
        playbook = body["playbook"]
        tasks = {t["name"]: t for t in yaml.load(playbook["yaml"], PlaybookLoader)[0]["tasks"]}
        apt = tasks["Packages from the repositories"]["ansible.builtin.apt"]
        assert f"nginx={installed['nginx']['version']}" in apt["name"], apt
        assert apt["update_cache"] is True
        assert not [f for f in playbook["files"] if f["name"].endswith(".deb")], playbook["files"]
        assert not any("deb" in (t.get("ansible.builtin.apt") or {}) for t in tasks.values())

        t0 = time.monotonic()
        status, body = api.post(
            f"/v1/sandboxes/{sandbox.id}/playbook/verify",
            {"from": "clean", "to": "nginx-installed", "wait": True},
            timeout=2400,
        )
        timings["verify (replica, two runs)"] = time.monotonic() - t0
        assert status == 200, body
        op = body["operation"]
        assert op["status"] == "succeeded", op
        result = op["result"]
        assert result["first_run"]["status"] == "successful", result["first_run"]["failed_tasks"]
        assert result["reproduces"] is True, result.get("residual")
        assert result["idempotent"] is True and result["changed_on_second_run"] == 0
    finally:
        client.sandbox.destroy_sandbox(sandbox.id)
        timings["all"] = time.monotonic() - started
        print("\n" + "\n".join(f"  {k}: {v:.1f} s" for k, v in timings.items()))
