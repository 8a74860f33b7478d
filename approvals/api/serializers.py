from __future__ import annotations

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


class ApprovalSerializer(serializers.Serializer):
    """Output only: the dict built by services.as_dict (one shape for API, socket, ask)."""

    id = serializers.UUIDField()
    request_id = serializers.UUIDField()
    status = serializers.ChoiceField(ApprovalStatus.choices)
    approved = serializers.BooleanField()
    kind = serializers.CharField()
    prompt = serializers.CharField()
    action_type = serializers.CharField()
    payload = serializers.JSONField()
    context = serializers.CharField()
    urgency = serializers.CharField()
    alternatives = serializers.ListField(child=serializers.CharField())
    agent_id = serializers.CharField()
    requested_by = serializers.CharField()
    sandbox_id = serializers.UUIDField(allow_null=True)
    decided_by = serializers.CharField(allow_null=True)
    approved_by = serializers.CharField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    approved_at = serializers.DateTimeField(allow_null=True)
    reason = serializers.CharField()
    comment = serializers.CharField()
    timeout_seconds = serializers.IntegerField()
    expires_at = serializers.DateTimeField()
    idempotency_key = serializers.CharField()
    consumed_at = serializers.DateTimeField(allow_null=True)
    origin = serializers.ChoiceField(
        ApprovalOrigin.choices,
        help_text="caller: asked through a public route; system: opened by the server for an "
        "action it reserves (an apply), the only kind that action accepts.",
    )
    created_at = serializers.DateTimeField()
