"""Builds the playbooks' driver-layer settings (who runs Ansible, what it must not see) from
Django settings: the runner itself never reads settings."""

from __future__ import annotations

import os

from django.conf import settings

from core.conf import vsb

from . import runner


def ansible_isolation():
    """Who runs Ansible and what its namespace covers: every directory holding a secret of
    the service (the CA key, the data directory with the database and keys, the sandboxes'
    disks, the terminals' keys, root's home)."""
    hidden = {
        str(settings.DATA_DIR),
        os.path.dirname(vsb("SSH_CA_KEY")),
        vsb("SANDBOX_DIR"),
        vsb("TERMINAL_DIR"),
        "/root",
        *vsb("ANSIBLE_HIDE"),
    }
    return runner.Isolation(
        user=vsb("ANSIBLE_USER"), run_root=vsb("ANSIBLE_RUN_DIR"), hide=tuple(sorted(hidden))
    )


def syntax_check(yaml_text: str, files: dict[str, bytes]) -> tuple[bool, str]:
    """`ansible-playbook --syntax-check` templates play-level fields: isolated like a run."""
    return runner.syntax_check(yaml_text, files, isolation=ansible_isolation())
