"""The original SDK README's demo, line for line but for the source VM and the command: the
unit ring runs it against a mock server (test_client), the e2e ring against the real one."""

from __future__ import annotations


def run_readme_demo(client, source_vm_name: str, command: str):
    """Returns the sandbox it made (and destroyed)."""
    sandbox = client.sandbox.create_sandbox(
        source_vm_name=source_vm_name,
        agent_id="nginx-setup-agent",
        auto_start=True,
        wait_for_ip=True,
    ).sandbox
    client.sandbox.run_sandbox_command(sandbox.id, command)
    client.sandbox.create_snapshot(sandbox.id, name="nginx-installed")
    client.sandbox.destroy_sandbox(sandbox.id)
    return sandbox
