"""The audit trail: one append-only row per thing that changed, chained by hashes.

Each event stores the hash of the one before it, so changing or removing a row in the
database breaks the chain at that row and `manage.py verify_audit` names it. The ORM and the
admin refuse updates and deletes; the database itself is the operator's (a DBA can still
rewrite the table, which is exactly what the chain makes visible)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AppendOnly(Exception):
    pass


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnly("audit events are append-only")

    def delete(self):
        raise AppendOnly("audit events are append-only")

    _raw_delete = delete


class AuditEvent(models.Model):
    seq = models.BigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False)
    # Who: "user:<username>" for people and agents (agents are users with API keys),
    # "system" for the workers and periodic tasks.
    actor = models.CharField(max_length=200, db_index=True)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        related_name="+",
        # The id is part of the hashed event: deleting a user must not rewrite history.
        on_delete=models.DO_NOTHING,
        db_constraint=False,
    )
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    verb = models.CharField(max_length=100, db_index=True)
    target_type = models.CharField(max_length=50, blank=True)
    target_id = models.CharField(max_length=100, blank=True)
    sandbox_id = models.UUIDField(null=True, blank=True, db_index=True)
    agent = models.CharField(max_length=200, blank=True, db_index=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        indexes = [models.Index(fields=["created_at"])]
        # add/change/delete stay in the table for completeness but nobody is granted them
        # through the admin (see audit/admin.py).
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"#{self.seq} {self.verb} by {self.actor}"

    # The append-only guard itself, not a writer: the one INSERT is audit.services.record's
    # `objects.create`, which lands here; every other save and delete is refused.
    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnly("audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnly("audit events are append-only")


class AuditHead(models.Model):
    """One row: the last sequence number and hash. Appending locks it (SELECT FOR UPDATE), so
    concurrent writers on any number of processes extend one chain without forks."""

    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"audit head #{self.seq}"
