import json

from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import path

from core.admin import ReadOnlyModelAdmin
from core.errors import ServiceError

from . import services
from .models import ApprovalRequest

# The question, payload and context are shown once, whole and escaped, above the fields
# (templates/admin/approvals/approvalrequest/change_form.html).
SHOWN_ABOVE = ("prompt", "payload", "context")


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyModelAdmin):
    """Operators decide here (actions), through the services: the same compare-and-set,
    permission check and audit as the API. The request itself is never edited."""

    list_display = (
        "created_at",
        "status",
        "agent_id",
        "prompt_short",
        "action_type",
        "origin",
        "urgency",
        "decided_by",
        "expires_at",
    )
    list_filter = ("status", "origin", "urgency", "kind")
    search_fields = ("prompt", "agent_id", "requested_by__username", "action_type")
    exclude = SHOWN_ABOVE
    readonly_fields = [f.name for f in ApprovalRequest._meta.fields if f.name not in SHOWN_ABOVE]
    actions = ["approve_selected", "deny_selected"]

    def get_urls(self):
        decide = self.admin_site.admin_view(self.decide_view)
        return [
            path("<uuid:pk>/decide/", decide, name="approvals_approvalrequest_decide"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        req = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if req is not None:
            extra["payload_text"] = (
                json.dumps(req.payload, indent=2, sort_keys=True) if req.payload else ""
            )
            extra["context_size"] = len(req.context)
            extra["can_decide_now"] = (
                req.is_pending
                and services.can_decide(request.user)
                and req.requested_by_id != request.user.pk
            )
        return super().change_view(request, object_id, form_url, extra)

    def decide_view(self, request, pk):
        """The Approve / Deny buttons of the change page (POST only)."""
        req = get_object_or_404(ApprovalRequest, pk=pk)
        if request.method == "POST":
            approve = request.POST.get("decision") == "Approve"
            try:
                services.decide(
                    request.user, req.pk, approve=approve, reason=request.POST.get("reason", "")
                )
                self.message_user(request, f"{'Approved' if approve else 'Denied'}.")
            except ServiceError as err:
                self.message_user(request, err.message, level=messages.ERROR)
        return redirect("admin:approvals_approvalrequest_change", req.pk)

    @admin.display(description="prompt")
    def prompt_short(self, obj):
        return obj.prompt[:80]

    def has_decide_permission(self, request):
        return services.can_decide(request.user)

    @admin.action(description="Approve selected requests", permissions=["decide"])
    def approve_selected(self, request, queryset):
        self._decide(request, queryset, approve=True)

    @admin.action(description="Deny selected requests", permissions=["decide"])
    def deny_selected(self, request, queryset):
        self._decide(request, queryset, approve=False)

    def _decide(self, request, queryset, *, approve: bool):
        done, refused = 0, []
        for req in queryset:
            try:
                services.decide(
                    request.user, req.pk, approve=approve, reason="decided in the admin"
                )
                done += 1
            except ServiceError as err:
                refused.append(f"{req.pk}: {err.message}")
        if done:
            self.message_user(request, f"{'Approved' if approve else 'Denied'} {done} request(s).")
        for line in refused:
            self.message_user(request, line, level=messages.WARNING)
