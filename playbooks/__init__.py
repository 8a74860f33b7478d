"""Ansible playbooks from a sandbox's diff: generation (pure), reading the target state on the
host, replay verification and approved applies. No Django in generator.py or state.py."""
