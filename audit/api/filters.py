from datetime import UTC

import django_filters
from rest_framework.exceptions import ValidationError

from ..models import AuditEvent


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time compared in UTC: PostgreSQL refuses offsets past ±15:59, which ISO
    8601 (and Python) allow, and a time past year 1..9999 in UTC is no time at all."""

    def __init__(self, *args, param: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.param = param

    def filter(self, qs, value):
        if value is not None:
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                raise ValidationError({self.param: ["is out of range."]}) from None
        return super().filter(qs, value)


class AuditEventFilter(django_filters.FilterSet):
    sandbox = django_filters.UUIDFilter(field_name="sandbox_id")
    agent = django_filters.CharFilter(field_name="agent")
    actor = django_filters.CharFilter(method="filter_actor")
    verb = django_filters.CharFilter(method="filter_verb")
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte", param="since")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt", param="until")
    after = django_filters.NumberFilter(field_name="seq", lookup_expr="gt")
    request_id = django_filters.CharFilter(field_name="request_id")

    class Meta:
        model = AuditEvent
        fields: list[str] = []

    def filter_actor(self, queryset, name, value):
        # "alice" and "user:alice" both mean the user alice; "system" and "anonymous" as is.
        if ":" not in value and value not in ("system", "anonymous"):
            value = f"user:{value}"
        return queryset.filter(actor=value)

    def filter_verb(self, queryset, name, value):
        # "sandbox" matches every sandbox.* verb; "sandbox.create" just that one.
        return queryset.filter(verb=value) | queryset.filter(verb__startswith=f"{value}.")
