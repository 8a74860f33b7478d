from django.contrib import admin

from .models import TerminalSession


@admin.register(TerminalSession)
class TerminalSessionAdmin(admin.ModelAdmin):
    """Terminal sessions opened in sandboxes, and who took one over. Read-only: sessions are
    opened through the API or the terminal page and closed when killed or reaped."""

    list_display = ["sandbox", "name", "created_by", "created_at", "closed_at", "taken_over_by"]
    list_filter = ["closed_at"]
    search_fields = ["name", "tmux_name", "sandbox__name"]
    readonly_fields = [f.name for f in TerminalSession._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
