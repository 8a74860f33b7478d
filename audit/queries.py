"""Who may read which part of the audit trail."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from core import hooks

from .models import AuditEvent


def is_auditor(user) -> bool:
    return user.is_staff or user.has_perm("audit.view_auditevent")


def visible_events(user) -> QuerySet[AuditEvent]:
    """Operators (staff, or the view permission) read everything; an agent reads what it did
    and what happened to its own sandboxes."""
    qs = AuditEvent.objects.all()
    if is_auditor(user):
        return qs
    owned = hooks.visible_sandboxes(user).values("pk")
    return qs.filter(Q(actor_user_id=user.pk) | Q(sandbox_id__in=owned))
