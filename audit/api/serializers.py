from rest_framework import serializers

from ..models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "created_at",
            "actor",
            "source_ip",
            "request_id",
            "verb",
            "target_type",
            "target_id",
            "sandbox_id",
            "agent",
            "data",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields
