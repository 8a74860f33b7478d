from rest_framework import serializers

from approvals.api.serializers import ApprovalSerializer
from core.api.serializers import StrictInputSerializer

from ..models import EgressConnection


class EgressRuleSerializer(serializers.Serializer):
    rule = serializers.CharField(help_text="host pattern and port, e.g. `*.pythonhosted.org:443`")
    source = serializers.CharField(help_text="host apt mirror, settings, create or grant")
    expires_at = serializers.DateTimeField(allow_null=True)
    approval_id = serializers.UUIDField(allow_null=True)


class EgressPolicySerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    proxy = serializers.CharField(allow_null=True, help_text="the proxy URL the guest uses")
    rules = EgressRuleSerializer(many=True)
    always_denied = serializers.ListField(
        child=serializers.CharField(),
        help_text="networks no rule opens (checked on the addresses a name resolves to)",
    )


class EgressRequestSerializer(StrictInputSerializer):
    host = serializers.CharField(max_length=300)
    port = serializers.IntegerField(required=False, default=443)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    ttl_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)


class EgressRequestAnswerSerializer(serializers.Serializer):
    allowed = serializers.BooleanField(help_text="true when the policy already allows it")
    rule = serializers.CharField(allow_blank=True, help_text="the rule that allows it")
    approval = ApprovalSerializer(
        allow_null=True, help_text="the approval request an operator decides (the grant)"
    )


class EgressConnectionSerializer(serializers.ModelSerializer):
    sandbox_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = EgressConnection
        exclude = ["sandbox"]
        read_only_fields = [f.name for f in EgressConnection._meta.fields]
