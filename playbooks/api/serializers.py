"""Input of the playbooks API."""

from __future__ import annotations

from rest_framework import serializers

from core.api.serializers import StrictInputSerializer


class VerifyPlaybookSerializer(StrictInputSerializer):
    aliases = {"from": "from_name", "to": "to_name"}
    from_name = serializers.CharField(max_length=64)
    to_name = serializers.CharField(max_length=64)
    version = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    wait = serializers.BooleanField(required=False, default=False)


class EditSerializer(StrictInputSerializer):
    yaml = serializers.CharField()
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class InventoryHostSerializer(StrictInputSerializer):
    name = serializers.CharField(max_length=100)
    address = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    port = serializers.IntegerField(required=False, min_value=1, max_value=65535, default=22)
    user = serializers.CharField(max_length=64, required=False, default="root")
    groups = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, default=list
    )
    variables = serializers.DictField(required=False, default=dict)
    host_key = serializers.CharField(required=False, allow_blank=True, default="")
    private_key = serializers.CharField(
        required=False, allow_blank=True, default="", write_only=True, trim_whitespace=False
    )
    certificate = serializers.CharField(required=False, allow_blank=True, default="")
    sandbox_id = serializers.UUIDField(required=False, allow_null=True, default=None)


class InventorySerializer(StrictInputSerializer):
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    variables = serializers.DictField(required=False, default=dict)
    hosts = InventoryHostSerializer(many=True)


class RunSerializer(StrictInputSerializer):
    inventory = serializers.UUIDField()
    version = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    approval_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    wait = serializers.BooleanField(required=False, default=False)
