"""Approval requests: an agent asks, a person with the decide permission answers."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from .choices import ApprovalKind, ApprovalOrigin, ApprovalStatus, Urgency


class ApprovalRequest(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approval_requests"
    )
    agent_id = models.CharField(max_length=200, blank=True)
    sandbox = models.ForeignKey(
        "sandboxes.Sandbox",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="approval_requests",
    )
    kind = models.CharField(
        max_length=20, choices=ApprovalKind.choices, default=ApprovalKind.QUESTION
    )
    # A free-text question ("May I restart nginx on prod-1?"), or for a typed action what
    # it is: apply_playbook, destructive, sensitive, irreversible, ...
    prompt = models.TextField()
    action_type = models.CharField(max_length=50, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    context = models.TextField(blank=True)
    urgency = models.CharField(max_length=10, choices=Urgency.choices, default=Urgency.MEDIUM)
    alternatives = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=20, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING, db_index=True
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="approval_decisions",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    timeout_seconds = models.PositiveIntegerField()
    expires_at = models.DateTimeField(db_index=True)
    idempotency_key = models.CharField(max_length=200, blank=True)
    # Set when an approved action is carried out: one approval allows one use.
    consumed_at = models.DateTimeField(null=True, blank=True)
    # Who opened it: a caller of the public routes, or the server for an action it reserves
    # (choices.RESERVED_ACTION_TYPES). Set only by the service layer; never an API input.
    # Rows from before this field are callers': they can never unlock a reserved action.
    origin = models.CharField(
        max_length=10, choices=ApprovalOrigin.choices, default=ApprovalOrigin.CALLER
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("decide_approvalrequest", "Can approve or deny approval requests")]
        constraints = [
            models.UniqueConstraint(
                fields=["requested_by", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="approval_idempotency_per_requester",
            )
        ]

    def __str__(self) -> str:
        return f"{self.prompt[:60]} ({self.status})"

    @property
    def is_pending(self) -> bool:
        return self.status == ApprovalStatus.PENDING
