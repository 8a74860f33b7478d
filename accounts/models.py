"""Who calls the API: agents' API keys (operators are Django users with permissions)."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models


def limit_field(what: str) -> models.PositiveIntegerField:
    """A key's own limit; empty (NULL): the settings default."""
    return models.PositiveIntegerField(
        null=True, blank=True, help_text=f"{what} Empty: the default."
    )


class ApiKey(models.Model):
    """An agent's API key. Only a SHA-256 of the secret is stored: keys are 256-bit random,
    so a slow password hash would buy nothing and cost every request."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The agent's quotas when it calls with this key (sandboxes/quotas.py); empty: the
    # settings default (VSB_QUOTA_*). Usage is counted over the key's user: all its keys.
    max_sandboxes = limit_field("Live (not destroyed) sandboxes.")
    max_memory_mb = limit_field("MiB of memory of all live sandboxes together.")
    max_snapshots_per_sandbox = limit_field("Snapshots of one sandbox.")
    max_concurrent_commands = limit_field("Commands running at once.")
    default_ttl_seconds = limit_field("TTL of a sandbox created without one; 0: none.")

    class Meta:
        # The table keeps the name it had in the sandboxes app (accounts/migrations/0001).
        db_table = "sandboxes_apikey"
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @staticmethod
    def hash_secret(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()
