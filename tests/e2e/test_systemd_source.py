"""The same image booted with full systemd (`debian-base-systemd`) for work that needs real
units: it comes up under systemd, reachable like the fast variant."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def test_it_boots_the_systemd_variant_with_real_units(e2e_stack):
    api = e2e_stack.alice
    sandbox = api.create_sandbox(source_vm_name="debian-base-systemd", agent_id="systemd")
    try:
        lines = api.run(
            sandbox["id"], "ps -p 1 -o comm=; systemctl is-enabled ssh qemu-guest-agent; hostname"
        )["stdout"].split()
        assert lines[0] == "systemd"
        assert lines[1] == "enabled", lines  # ssh
        assert lines[2] == "static", lines  # qemu-guest-agent: started by its device unit
        assert lines[-1] == sandbox["name"]
    finally:
        api.destroy_sandbox(sandbox["id"])
