"""A sandbox's own egress rules (on top of the settings' defaults) and the connection log."""

from __future__ import annotations

import uuid

from django.db import models

from .choices import RuleSource
from .rules import Rule


class EgressRule(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sandbox = models.ForeignKey(
        "sandboxes.Sandbox", on_delete=models.CASCADE, related_name="egress_rules"
    )
    pattern = models.CharField(max_length=260)
    port = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=RuleSource.choices)
    approval = models.OneToOneField(
        "approvals.ApprovalRequest",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="egress_rule",
    )
    reason = models.CharField(max_length=2000, blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # None: as long as the sandbox lives (create rules); grants always expire.
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["sandbox", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.pattern}:{self.port} ({self.source})"

    @property
    def rule(self) -> Rule:
        return Rule(self.pattern, self.port)


class EgressConnection(models.Model):
    """One connection a guest asked the egress proxy for, allowed or denied."""

    id = models.BigAutoField(primary_key=True)
    sandbox = models.ForeignKey(
        "sandboxes.Sandbox", on_delete=models.CASCADE, related_name="egress_connections"
    )
    host = models.CharField(max_length=260)
    port = models.PositiveIntegerField()
    allowed = models.BooleanField()
    # Which rule allowed it, or why it was denied.
    rule = models.CharField(max_length=300)
    address = models.CharField(max_length=64, blank=True)
    bytes_up = models.BigIntegerField(default=0)
    bytes_down = models.BigIntegerField(default=0)
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["sandbox", "-started_at"])]

    def __str__(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        return f"{self.host}:{self.port} {verdict}"
