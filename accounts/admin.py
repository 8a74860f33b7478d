from django.contrib import admin, messages

from . import services
from .models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Operators issue agent keys here; the secret is shown once, only its hash is kept."""

    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at"]
    actions = ["revoke_selected"]

    def get_fields(self, request, obj=None):
        return (
            ["user", "name"]
            if obj is None
            else ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
        )

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["user", "prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):
        if change:
            services.rename_api_key(obj, obj.name)
            return
        key, secret = services.create_api_key(obj.user, obj.name)
        obj.pk, obj.prefix = key.pk, key.prefix
        self.message_user(
            request,
            f"API key for {obj.user}: {secret}  (copy it now: it is not stored and will not be shown again)",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request, queryset):
        count = services.revoke_keys(queryset, by=request.user)
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the key's history stays
