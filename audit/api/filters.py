import django_filters

from ..models import AuditEvent


class AuditEventFilter(django_filters.FilterSet):
    sandbox = django_filters.UUIDFilter(field_name="sandbox_id")
    agent = django_filters.CharFilter(field_name="agent")
    actor = django_filters.CharFilter(method="filter_actor")
    verb = django_filters.CharFilter(method="filter_verb")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
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
