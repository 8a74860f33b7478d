from django.contrib import admin

from core.admin import ReadOnlyModelAdmin

from .models import EgressConnection, EgressRule


@admin.register(EgressConnection)
class EgressConnectionAdmin(ReadOnlyModelAdmin):
    list_display = ("started_at", "sandbox", "host", "port", "allowed", "rule", "bytes_down")
    list_filter = ("allowed",)
    search_fields = ("host", "rule", "sandbox__name")
    date_hierarchy = "started_at"


@admin.register(EgressRule)
class EgressRuleAdmin(ReadOnlyModelAdmin):
    list_display = ("sandbox", "pattern", "port", "source", "expires_at", "created_by")
    list_filter = ("source",)
    search_fields = ("pattern", "sandbox__name")
