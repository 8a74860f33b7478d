from django.contrib import admin

from core.admin import ReadOnlyModelAdmin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyModelAdmin):
    """Read-only: operators browse and filter the trail; nobody adds, edits or deletes."""

    list_display = (
        "seq",
        "created_at",
        "actor",
        "verb",
        "target_type",
        "target_id",
        "agent",
        "source_ip",
    )
    list_filter = ("verb", "target_type")
    search_fields = ("actor", "verb", "target_id", "agent", "request_id")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]
    actions = None
