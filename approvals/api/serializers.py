from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.serializers import StrictInputSerializer

from ..choices import ApprovalKind, ApprovalOrigin, ApprovalStatus, Urgency


class AskSerializer(StrictInputSerializer):
    """What an agent asks. The original's names (question-less `prompt`, `timeout_secs`,
    `action_type`, `urgency`, `alternatives`) are accepted as they were."""

    aliases = {"timeout_secs": "timeout_seconds", "question": "prompt"}
    prompt = serializers.CharField(max_length=10000)
    kind = serializers.ChoiceField(
        ApprovalKind.choices, required=False, default=ApprovalKind.QUESTION
    )
    action_type = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")
    payload = serializers.JSONField(required=False, default=dict)
    context = serializers.CharField(max_length=20000, required=False, allow_blank=True, default="")
    urgency = serializers.ChoiceField(Urgency.choices, required=False, default=Urgency.MEDIUM)
    alternatives = serializers.ListField(
        child=serializers.CharField(max_length=1000), required=False, default=list, max_length=20
    )
    timeout_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)
    sandbox_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    agent_id = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    idempotency_key = serializers.CharField(
        max_length=200, required=False, allow_blank=True, default=""
    )

    def validate_payload(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object.")
        return value


class DecisionSerializer(StrictInputSerializer):
    aliases = {"comment": "reason"}
    reason = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")


class RespondSerializer(StrictInputSerializer):
    """The original's POST /v1/human/respond. `approved_by` is accepted for compatibility
    and ignored: the decider is whoever is authenticated."""

    aliases = {"comment": "reason"}
    request_id = serializers.UUIDField()
    approved = serializers.BooleanField()
    reason = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")
    approved_by = serializers.CharField(
        max_length=150, required=False, allow_blank=True, default=""
    )


class BulkDecisionSerializer(StrictInputSerializer):
    ids = serializers.ListField(child=serializers.UUIDField(), min_length=1, max_length=1000)
    decision = serializers.ChoiceField(["approve", "deny"])
    reason = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")


class _IsoDateTimeField(serializers.DateTimeField):
    """A datetime as Python's isoformat() writes it (`+00:00`, not DRF's `Z`): the form the
    approvals API, socket and webhook have always sent."""

    def to_representation(self, value):
        return value.isoformat() if value else None


class ApprovalSerializer(serializers.Serializer):
    """An approval request as the API, the websocket, the webhook and the blocking ask send
    it (services.as_dict): ours and the original's field names (request_id, approved,
    approved_by, approved_at, comment) side by side. Output only."""

    id = serializers.UUIDField()
    request_id = serializers.UUIDField(source="id")
    status = serializers.ChoiceField(ApprovalStatus.choices)
    approved = serializers.SerializerMethodField()
    kind = serializers.CharField()
    prompt = serializers.CharField()
    action_type = serializers.CharField()
    payload = serializers.JSONField()
    context = serializers.CharField()
    urgency = serializers.CharField()
    alternatives = serializers.ListField(child=serializers.CharField())
    agent_id = serializers.CharField()
    requested_by = serializers.CharField(source="requested_by.get_username")
    sandbox_id = serializers.UUIDField(allow_null=True)
    decided_by = serializers.CharField(source="decided_by.get_username", allow_null=True)
    approved_by = serializers.SerializerMethodField()
    decided_at = _IsoDateTimeField(allow_null=True)
    approved_at = serializers.SerializerMethodField()
    reason = serializers.CharField()
    comment = serializers.CharField(source="reason")
    timeout_seconds = serializers.IntegerField()
    expires_at = _IsoDateTimeField()
    idempotency_key = serializers.CharField()
    consumed_at = _IsoDateTimeField(allow_null=True)
    origin = serializers.ChoiceField(
        ApprovalOrigin.choices,
        help_text="caller: asked through a public route; system: opened by the server for an "
        "action it reserves (an apply), the only kind that action accepts.",
    )
    created_at = _IsoDateTimeField(allow_null=True)

    def get_approved(self, req) -> bool:
        return req.status == ApprovalStatus.APPROVED

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_approved_by(self, req) -> str | None:
        return (
            req.decided_by.get_username() if self.get_approved(req) and req.decided_by_id else None
        )

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_approved_at(self, req) -> str | None:
        return req.decided_at.isoformat() if self.get_approved(req) and req.decided_at else None


class PendingSerializer(serializers.Serializer):
    """The original's GET /api/v1/human/pending."""

    pending = ApprovalSerializer(many=True)


class CancelledSerializer(serializers.Serializer):
    """The original's DELETE /api/v1/human/pending/{id}."""

    request_id = serializers.UUIDField(source="id")
    cancelled = serializers.SerializerMethodField()
    status = serializers.ChoiceField(ApprovalStatus.choices)

    def get_cancelled(self, req) -> bool:
        return True


class BulkRefusalSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class BulkItemSerializer(serializers.Serializer):
    """One request of a bulk decision: its new status, or why it was refused (the others
    still go ahead)."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(ApprovalStatus.choices, required=False)
    error = BulkRefusalSerializer(required=False)


class BulkResultSerializer(serializers.Serializer):
    results = BulkItemSerializer(many=True)
