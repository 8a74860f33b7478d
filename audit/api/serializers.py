from rest_framework import serializers

from .. import chain
from ..models import AuditEvent


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        # What the hash covers (but the user's id: `actor` names them) and the two links.
        fields = [f for f in chain.HASHED_FIELDS if f != "actor_user_id"] + ["prev_hash", "hash"]
        read_only_fields = fields
