"""Input and output of the playbooks API. The answers keep the shapes they had as hand-built
bodies: times as `isoformat()` (with `+00:00`), ids as strings, `from` and `to` keys."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.serializers import ErrorSerializer, StrictInputSerializer
from sandboxes.api.serializers import OperationSerializer

from .. import runs
from ..models import Inventory, InventoryHost, PlaybookEvent, PlaybookRun


def _wrapping(name: str, **field) -> type[serializers.Serializer]:
    """An answer that wraps one object or a list under one key (`{"run": {...}}`); `name`
    is the class name the OpenAPI schema's component is called by."""
    return type(name, (serializers.Serializer,), field)


# A model as answered, never written through: every field its Meta lists is read-only
# (`read_only_fields = fields`, said once). A comment, not a docstring: the schema would show
# it as the description of each answer that has none of its own.
class _Answer(serializers.ModelSerializer):
    def get_extra_kwargs(self) -> dict:
        extra = super().get_extra_kwargs()
        for name in self.Meta.fields:
            extra.setdefault(name, {})["read_only"] = True
        return extra


# --- input -----------------------------------------------------------------------------------


class VerifyPlaybookSerializer(StrictInputSerializer):
    aliases = {"from": "from_name", "to": "to_name"}
    from_name = serializers.CharField(max_length=64)
    to_name = serializers.CharField(max_length=64)
    version = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    wait = serializers.BooleanField(required=False, default=False)


class EditSerializer(StrictInputSerializer):
    yaml = serializers.CharField()
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class NewInventoryHostSerializer(StrictInputSerializer):
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


class NewInventorySerializer(StrictInputSerializer):
    name = serializers.RegexField(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    description = serializers.CharField(required=False, allow_blank=True, default="")
    variables = serializers.DictField(required=False, default=dict)
    hosts = NewInventoryHostSerializer(many=True)


class StartRunSerializer(StrictInputSerializer):
    inventory = serializers.UUIDField()
    version = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1)
    approval_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    wait = serializers.BooleanField(required=False, default=False)


class WaitQuerySerializer(serializers.Serializer):
    """`?wait=`: GET diff and playbook wait for a result still being made unless false (as
    they always did; the SDK and the original's clients expect the answer itself)."""

    wait = serializers.BooleanField(required=False, default=True)


# --- output ----------------------------------------------------------------------------------


class IsoDateTimeField(serializers.DateTimeField):
    """`datetime.isoformat()`, as these answers always wrote times."""

    def to_representation(self, value):
        return value.isoformat()


class FromToSerializer(serializers.Serializer):
    """Answers with `from` and `to` keys (a Python keyword cannot name a declared field):
    declare `from_name` and `to_name`, each with its `source`."""

    def get_fields(self):
        renamed = {"from_name": "from", "to_name": "to"}
        return {renamed.get(name, name): field for name, field in super().get_fields().items()}


class PlaybookFileSerializer(serializers.Serializer):
    name = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()


class PlaybookSerializer(FromToSerializer):
    """One version of a playbook (a PlaybookVersion, with its playbook's fields)."""

    id = serializers.UUIDField(source="playbook.id")
    sandbox_id = serializers.UUIDField(source="playbook.sandbox_id")
    from_name = serializers.CharField(source="playbook.from_name")
    to_name = serializers.CharField(source="playbook.to_name")
    version = serializers.IntegerField(source="number")
    version_id = serializers.UUIDField(source="id")
    sha256 = serializers.CharField()
    generated = serializers.BooleanField()
    yaml = serializers.CharField()
    warnings = serializers.ListField(child=serializers.CharField())
    skipped = serializers.ListField(child=serializers.DictField())
    files = PlaybookFileSerializer(many=True)
    syntax_ok = serializers.BooleanField(allow_null=True)
    syntax_output = serializers.CharField()
    note = serializers.CharField()
    created_at = IsoDateTimeField()
    created_by = serializers.CharField(source="created_by.get_username", allow_null=True)
    versions = serializers.ListField(
        source="playbook.version_numbers", child=serializers.IntegerField()
    )


PlaybookBodySerializer = _wrapping("PlaybookBodySerializer", playbook=PlaybookSerializer())


class DiffFilesSerializer(serializers.Serializer):
    """The changed files, one page: each `{"change": added|removed|modified|touched, "path",
    ...attributes}`."""

    count = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    results = serializers.ListField(child=serializers.DictField())


FILE_CHANGES = ("added", "removed", "modified", "touched")


def _content(field_class, name: str, **kwargs) -> serializers.Field:
    """A key of the diff's stored result; left out, as it always was, by a result without it."""
    return field_class(source=f"content.{name}", required=False, **kwargs)


def _section() -> serializers.Field:
    """added/removed/... lists of records."""
    return serializers.ListField(child=serializers.DictField())


class DiffSerializer(FromToSerializer):
    """A computed Diff; the file changes paginate with `limit` and `offset` from the context."""

    id = serializers.UUIDField()
    from_name = serializers.CharField(source="from_name")
    to_name = serializers.CharField(source="to_name")
    files = serializers.SerializerMethodField()
    packages = _content(serializers.DictField, "packages", child=_section())
    units = _content(serializers.DictField, "units", child=_section())
    users = _content(serializers.DictField, "users", child=_section())
    groups = _content(serializers.DictField, "groups", child=_section())
    notes = _content(serializers.ListField, "notes", child=serializers.CharField())
    summary = _content(
        serializers.DictField,
        "summary",
        child=serializers.DictField(child=serializers.IntegerField()),
    )
    commands = _content(serializers.ListField, "commands", child=serializers.DictField())
    duration_ms = _content(serializers.IntegerField, "duration_ms")

    @extend_schema_field(DiffFilesSerializer)
    def get_files(self, diff) -> dict:
        files = diff.content["files"]
        changes = [
            {"change": kind, **entry} for kind in FILE_CHANGES for entry in files.get(kind, [])
        ]
        limit, offset = self.context["limit"], self.context["offset"]
        return {
            "count": len(changes),
            "limit": limit,
            "offset": offset,
            "results": changes[offset : offset + limit],
        }


DiffBodySerializer = _wrapping("DiffBodySerializer", diff=DiffSerializer())


class OperationBodySerializer(serializers.Serializer):
    """A slow step under way: poll GET /v1/operations/{id}."""

    operation = OperationSerializer()


class InventoryHostSerializer(_Answer):
    """A target as shown: never its key."""

    sandbox_id = serializers.UUIDField(allow_null=True)
    has_private_key = serializers.BooleanField()

    class Meta:
        model = InventoryHost
        fields = [
            "name",
            "address",
            "port",
            "user",
            "groups",
            "variables",
            "host_key",
            "sandbox_id",
            "has_private_key",
        ]


class InventorySerializer(_Answer):
    hosts = InventoryHostSerializer(many=True)
    fingerprint = serializers.SerializerMethodField()
    created_at = IsoDateTimeField()

    class Meta:
        model = Inventory
        fields = ["id", "name", "description", "variables", "hosts", "fingerprint", "created_at"]

    def get_fingerprint(self, inventory) -> str:
        return runs.fingerprint(inventory)


InventoryBodySerializer = _wrapping("InventoryBodySerializer", inventory=InventorySerializer())


InventoryListSerializer = _wrapping(
    "InventoryListSerializer", results=InventorySerializer(many=True)
)


class PlaybookRunSerializer(_Answer):
    playbook_id = serializers.UUIDField(source="version.playbook_id")
    version = serializers.IntegerField(source="version.number")
    inventory = serializers.CharField(source="inventory.name")
    inventory_id = serializers.UUIDField()
    approval_id = serializers.UUIDField(allow_null=True)
    created_at = IsoDateTimeField()
    started_at = IsoDateTimeField(allow_null=True)
    finished_at = IsoDateTimeField(allow_null=True)

    class Meta:
        model = PlaybookRun
        fields = [
            "id",
            "kind",
            "status",
            "playbook_id",
            "version",
            "inventory",
            "inventory_id",
            "approval_id",
            "host_stats",
            "failed_tasks",
            "error",
            "events_count",
            "cancel_requested",
            "created_at",
            "started_at",
            "finished_at",
        ]


RunBodySerializer = _wrapping("RunBodySerializer", run=PlaybookRunSerializer())


class PlaybookEventSerializer(_Answer):
    class Meta:
        model = PlaybookEvent
        fields = ["seq", "event", "host", "task", "data"]


EventListSerializer = _wrapping("EventListSerializer", events=PlaybookEventSerializer(many=True))


class ApprovalRequiredSerializer(ErrorSerializer):
    """409 `approval_required`: the approval request opened for this apply (as
    GET /v1/approvals/{id} shows it)."""

    approval = serializers.JSONField()
