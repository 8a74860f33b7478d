"""Who may read which part of the audit trail."""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import Q, QuerySet

from .models import AuditEvent

# Apps above audit say which sandboxes a user owns (the sandboxes app registers it when it
# loads): audit shows an agent the events of its own sandboxes without importing upwards.
_owned_sandboxes: list[Callable] = []


def register_owned_sandboxes(query: Callable) -> None:
    """`query(user)` returns a queryset of the primary keys of the sandboxes `user` owns."""
    _owned_sandboxes.append(query)


def is_auditor(user) -> bool:
    return user.is_staff or user.has_perm("audit.view_auditevent")


def visible_events(user) -> QuerySet[AuditEvent]:
    """Operators (staff, or the view permission) read everything; an agent reads what it did
    and what happened to its own sandboxes."""
    qs = AuditEvent.objects.all()
    if is_auditor(user):
        return qs
    visible = Q(actor_user_id=user.pk)
    for owned in _owned_sandboxes:
        visible |= Q(sandbox_id__in=owned(user))
    return qs.filter(visible)
