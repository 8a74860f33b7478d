"""Who may read which part of the audit trail."""

from __future__ import annotations

from django.apps import apps
from django.db.models import Q, QuerySet

from .models import AuditEvent


def is_auditor(user) -> bool:
    return user.is_staff or user.has_perm("audit.view_auditevent")


def visible_events(user) -> QuerySet[AuditEvent]:
    """Operators (staff, or the view permission) read everything; an agent reads what it did
    and what happened to its own sandboxes."""
    qs = AuditEvent.objects.all()
    if is_auditor(user):
        return qs
    # By its label, not an import: sandboxes is an app above this one (and records here).
    owned = apps.get_model("sandboxes", "Sandbox").objects.filter(owner=user).values("pk")
    return qs.filter(Q(actor_user_id=user.pk) | Q(sandbox_id__in=owned))
