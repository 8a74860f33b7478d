from django.contrib import admin, messages

from core.errors import ServiceError

from . import services
from .models import Command, Host, Operation, Sandbox, SourceVM


class WrittenByServicesAdmin(admin.ModelAdmin):
    """Edits and deletes go through a service (`save_service`, `delete_service`); the admin's own
    LogEntry is recorded in the audit trail by audit.signals, as for every admin change."""

    save_service = delete_service = None  # staticmethod(services.<function>)

    def save_model(self, request, obj, form, change):
        self.save_service(obj)

    def delete_model(self, request, obj):
        self.delete_service(type(obj).objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        self.delete_service(queryset)


@admin.register(Host)
class HostAdmin(WrittenByServicesAdmin):
    list_display = [
        "name",
        "enabled",
        "draining",
        "memory",
        "capacity",
        "memory_overcommit",
        "domain_type",
        "last_heartbeat",
    ]
    readonly_fields = [
        "queue_name",
        "draining",
        "last_heartbeat",
        "domain_type",
        "resources",
        "sandbox_dir",
        "port_range_start",
        "port_range_end",
        "boot_slots",
    ]
    save_service = staticmethod(services.save_host)
    delete_service = staticmethod(services.delete_hosts)
    actions = ["drain_selected", "undrain_selected"]

    @admin.display(description="memory committed / limit (MiB)")
    def memory(self, obj):
        room = services.rooms([obj])[obj.pk]
        limit = "?" if room.limit_mb is None else room.limit_mb
        return f"{room.committed_mb} / {limit}"

    def _drain(self, request, queryset, draining: bool) -> None:
        for host in queryset:
            services.set_draining(host, request.user, draining)
        verb = "Draining" if draining else "Open again"
        self.message_user(request, f"{verb}: {', '.join(h.name for h in queryset)}.")

    @admin.action(description="Drain selected hosts (no new sandboxes)", permissions=["drain"])
    def drain_selected(self, request, queryset):
        self._drain(request, queryset, True)

    @admin.action(description="End draining of selected hosts", permissions=["drain"])
    def undrain_selected(self, request, queryset):
        self._drain(request, queryset, False)

    def has_drain_permission(self, request) -> bool:
        return request.user.has_perm(services.DRAIN_PERMISSION)


@admin.register(SourceVM)
class SourceVMAdmin(WrittenByServicesAdmin):
    list_display = ["name", "kind", "host", "disk_path", "enabled"]
    save_service = staticmethod(services.save_source_vm)
    delete_service = staticmethod(services.delete_source_vms)


class OperationInline(admin.TabularInline):
    model = Operation
    extra = 0
    can_delete = False
    fields = [
        "kind",
        "status",
        "progress",
        "message",
        "error",
        "attempt",
        "created_at",
        "finished_at",
    ]
    readonly_fields = fields
    show_change_link = True


@admin.register(Sandbox)
class SandboxAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "agent_id",
        "owner",
        "state",
        "host",
        "source",
        "ssh_port",
        "created_at",
    ]
    list_filter = ["state", "host", "source"]
    search_fields = ["name", "agent_id", "id"]
    readonly_fields = ["terminal", *[f.name for f in Sandbox._meta.fields]]
    inlines = [OperationInline]

    @admin.display(description="terminal")
    def terminal(self, obj):
        from django.urls import reverse
        from django.utils.html import format_html

        return format_html(
            '<a href="{}" target="_blank">Open the live terminal</a>',
            reverse("terminal-page", args=[obj.pk]),
        )

    actions = ["stop_selected", "start_selected", "destroy_selected"]

    def _apply(self, request, queryset, verb: str, fn) -> None:
        done = 0
        for sandbox in queryset:
            try:
                fn(sandbox, request.user)
                done += 1
            except ServiceError as exc:
                self.message_user(request, f"{sandbox.name}: {exc.message}", messages.WARNING)
        if done:
            self.message_user(request, f"{verb} queued for {done} sandbox(es).", messages.SUCCESS)

    @admin.action(description="Stop selected sandboxes", permissions=["change"])
    def stop_selected(self, request, queryset):
        self._apply(request, queryset, "Stop", services.stop_sandbox)

    @admin.action(description="Start selected sandboxes", permissions=["change"])
    def start_selected(self, request, queryset):
        self._apply(request, queryset, "Start", services.start_sandbox)

    @admin.action(description="Destroy selected sandboxes", permissions=["destroy"])
    def destroy_selected(self, request, queryset):
        self._apply(request, queryset, "Destroy", services.destroy_sandbox)

    def has_delete_permission(self, request, obj=None):
        return False  # rows are history; a VM is removed with the "Destroy" action

    def has_destroy_permission(self, request) -> bool:
        return request.user.has_perm("sandboxes.delete_sandbox")


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "sandbox", "host", "progress", "attempt", "created_at"]
    list_filter = ["status", "kind", "host"]
    readonly_fields = [f.name for f in Operation._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(Command)
class CommandAdmin(admin.ModelAdmin):
    list_display = ["started_at", "sandbox", "short_command", "status", "exit_code", "duration_ms"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in Command._meta.fields]

    @admin.display(description="command")
    def short_command(self, obj):
        return obj.command[:80]

    def has_add_permission(self, request):
        return False
