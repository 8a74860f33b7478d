from django.contrib import admin


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Rows written only by a service (audit events, approval requests, playbook runs):
    operators browse them here, nobody adds, edits or deletes."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
