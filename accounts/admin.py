from django.contrib import admin, messages

from . import services
from .models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Operators issue agent keys here and set each key's quotas; the secret is shown once,
    only its hash is kept."""

    list_display = [
        "prefix",
        "user",
        "name",
        "max_sandboxes",
        "max_memory_mb",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    actions = ["revoke_selected"]

    def get_fieldsets(self, request, obj=None):
        key = ["user", "name"]
        if obj is not None:
            key += ["prefix", "created_at", "last_used_at", "revoked_at"]
        quotas = {
            "fields": list(services.LIMIT_FIELDS),
            "description": (
                "What the agent may hold at once when it calls with this key, counted over "
                "all its keys. Empty: the server's default (VSB_QUOTA_*, "
                "VSB_DEFAULT_TTL_SECONDS). Applies from the key's next request."
            ),
        }
        return [(None, {"fields": key}), ("Quotas", quotas)]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["user", "prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):
        limits = {field: getattr(obj, field) for field in services.LIMIT_FIELDS}
        if change:
            services.update_api_key(obj, name=obj.name, limits=limits, by=request.user)
            return
        key, secret = services.create_api_key(obj.user, obj.name, limits=limits)
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
