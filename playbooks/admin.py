"""Operators review and edit playbooks in the admin: an edit saves a new version through
the service (syntax-checked, audited; an approval of the old version no longer applies)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from core.admin import ReadOnlyModelAdmin
from core.errors import ServiceError

from . import services
from .models import Inventory, InventoryHost, Playbook, PlaybookRun, PlaybookVersion


class ReadOnlyInline(admin.TabularInline):
    """Rows shown beside their parent; only services write them."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False


class VersionInline(ReadOnlyInline):
    model = PlaybookVersion
    fields = ["number", "generated", "syntax_ok", "sha256", "note", "created_by", "created_at"]
    ordering = ["-number"]


class PlaybookForm(forms.ModelForm):
    new_yaml = forms.CharField(
        label="YAML (saving a change makes a new version)",
        widget=forms.Textarea(attrs={"rows": 40, "cols": 120, "style": "font-family: monospace"}),
        required=False,
        strip=False,
    )
    note = forms.CharField(label="what changed and why", required=False)

    class Meta:
        model = Playbook
        fields: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        latest = self.instance.latest if self.instance.pk else None
        if latest:
            self.fields["new_yaml"].initial = latest.yaml


@admin.register(Playbook)
class PlaybookAdmin(admin.ModelAdmin):
    form = PlaybookForm
    list_display = ["__str__", "status", "created_at"]
    readonly_fields = [
        "sandbox",
        "from_name",
        "to_name",
        "status",
        "error",
        "created_by",
        "created_at",
        "warnings",
    ]
    inlines = [VersionInline]

    @admin.display(description="warnings of the latest version")
    def warnings(self, obj):
        latest = obj.latest
        return "\n".join(latest.warnings) if latest and latest.warnings else "none"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        latest = obj.latest
        text = form.cleaned_data.get("new_yaml") or ""
        if not text.strip() or (latest and text.replace("\r\n", "\n") == latest.yaml):
            return
        try:
            version = services.edit(
                obj, request.user, text.replace("\r\n", "\n"), form.cleaned_data.get("note", "")
            )
        except ServiceError as err:
            self.message_user(request, err.message, level=messages.ERROR)
            return
        level = messages.SUCCESS if version.syntax_ok else messages.WARNING
        self.message_user(
            request,
            f"Saved version {version.number}"
            + (
                ""
                if version.syntax_ok
                else f"; it does not pass --syntax-check: {version.syntax_output[-300:]}"
            ),
            level=level,
        )


class HostInline(ReadOnlyInline):
    model = InventoryHost
    fields = ["name", "address", "port", "user", "groups", "sandbox", "host_key"]


@admin.register(Inventory)
class InventoryAdmin(ReadOnlyModelAdmin):
    """Read-only here: targets are registered through POST /v1/inventories (credentials are
    encrypted on the way in and never shown), by the service that audits it."""

    list_display = ["name", "description", "created_by", "created_at"]
    readonly_fields = ["name", "description", "variables", "created_by", "created_at"]
    inlines = [HostInline]


@admin.register(PlaybookRun)
class PlaybookRunAdmin(ReadOnlyModelAdmin):
    list_display = [
        "created_at",
        "kind",
        "status",
        "version",
        "inventory",
        "requested_by",
        "approval",
    ]
    list_filter = ["kind", "status"]
    readonly_fields = [f.name for f in PlaybookRun._meta.fields]
