from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.api.serializers import StrictInputSerializer

from ..choices import SandboxState
from ..models import Command, Host, Operation, Sandbox, Snapshot, SourceVM


# A row as the API answers it: every field its `Meta.fields` names is read-only. (A comment,
# not a docstring: drf-spectacular would give every answer's schema that text.)
class AnswerSerializer(serializers.ModelSerializer):
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.Meta.read_only_fields = cls.Meta.fields


class SandboxSerializer(AnswerSerializer):
    host = serializers.CharField(source="host.name", read_only=True)
    source_vm_name = serializers.CharField(source="source.name", read_only=True)
    # The original's names, kept so its clients keep working.
    sandbox_name = serializers.CharField(source="name", read_only=True)
    base_image = serializers.CharField(source="source.name", read_only=True)
    # Computed from the host's heartbeat (the row's `state` is kept as it was): false while
    # the sandbox's host has no live worker, when new work for it is a 503 host_unavailable.
    available = serializers.BooleanField(
        source="host.is_alive",
        read_only=True,
        help_text="Whether the sandbox's host has a live worker. While false, `state` is the "
        "last state the host reported, and commands, lifecycle verbs (except destroy), "
        "snapshots, files and terminals answer 503 `host_unavailable`.",
    )
    unavailable_reason = serializers.CharField(
        source="host.unavailable_reason",
        read_only=True,
        help_text="Why `available` is false (the host and its last heartbeat); empty when true.",
    )

    class Meta:
        model = Sandbox
        fields = [
            "id",
            "name",
            "sandbox_name",
            "agent_id",
            "state",
            "available",
            "unavailable_reason",
            "state_changed_at",
            "queue_position",
            "error",
            "host",
            "source_vm_name",
            "base_image",
            "vcpus",
            "memory_mb",
            "ttl_seconds",
            "expires_at",
            "network_mode",
            "ssh_host",
            "ssh_port",
            "ssh_username",
            "ip_address",
            "host_key",
            "created_at",
            "ready_at",
            "last_used_at",
            "destroyed_at",
        ]


class CreateSandboxSerializer(StrictInputSerializer):
    aliases = {"cpu": "vcpus"}
    source_vm_name = serializers.CharField(max_length=100, required=False, default="")
    from_sandbox = serializers.UUIDField(required=False, allow_null=True, default=None)
    from_snapshot = serializers.CharField(max_length=64, required=False, default="")
    agent_id = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    vcpus = serializers.IntegerField(required=False, allow_null=True, default=None)
    memory_mb = serializers.IntegerField(required=False, allow_null=True, default=None)
    ttl_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)
    auto_start = serializers.BooleanField(required=False, default=True)
    wait_for_ip = serializers.BooleanField(required=False, default=False)
    # `host[:port]` entries the guest may reach through the egress proxy on top of the
    # defaults (docs/egress.md); an agent names only self-service ones.
    egress_allow = serializers.ListField(
        child=serializers.CharField(max_length=300), required=False, default=list, max_length=64
    )


class SnapshotSerializer(AnswerSerializer):
    sandbox_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = Snapshot
        fields = [
            "id",
            "sandbox_id",
            "name",
            "description",
            "status",
            "has_memory",
            "domain_state",
            "error",
            "created_at",
            "taken_at",
        ]


class CreateSnapshotSerializer(StrictInputSerializer):
    aliases = {"external": "disk_only"}
    name = serializers.CharField(max_length=64)
    description = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=2000
    )
    disk_only = serializers.BooleanField(required=False, default=False)
    wait = serializers.BooleanField(required=False, default=False)


class WaitSerializer(StrictInputSerializer):
    wait_for_ip = serializers.BooleanField(required=False, default=False)
    wait = serializers.BooleanField(required=False, default=False)


class PauseSerializer(StrictInputSerializer):
    hibernate = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Save its memory to disk now (as the idle sweep does after "
        "VSB_IDLE_HIBERNATE_SECONDS) instead of only stopping its vCPUs.",
    )


class OperationSerializer(AnswerSerializer):
    host = serializers.CharField(source="host.name", read_only=True)
    sandbox_id = serializers.UUIDField(read_only=True)
    queue_position = serializers.SerializerMethodField(
        help_text="While this create or start waits for a boot slot of its host (its sandbox "
        "is `queued`): its place in the host's queue, 1 = next; else null."
    )

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_queue_position(self, op: Operation) -> int | None:
        # op.sandbox comes with the operation (select_related): no query here.
        sandbox = op.sandbox
        if op.is_done or sandbox is None or sandbox.state != SandboxState.QUEUED:
            return None
        return sandbox.queue_position

    class Meta:
        model = Operation
        fields = [
            "id",
            "kind",
            "status",
            "sandbox_id",
            "host",
            "queue",
            "attempt",
            "progress",
            "message",
            "queue_position",
            "error",
            "result",
            "created_at",
            "started_at",
            "finished_at",
            "deadline",
        ]


class SnapshotOperationSerializer(serializers.Serializer):
    """A snapshot verb's answer: its operation and the snapshot (null once it is gone)."""

    operation = OperationSerializer()
    snapshot = SnapshotSerializer(allow_null=True)


class SandboxOperationSerializer(serializers.Serializer):
    """A lifecycle verb's answer: the sandbox, its operation and, once the sandbox has one,
    the address to reach it."""

    sandbox = SandboxSerializer()
    operation = OperationSerializer()
    ip_address = serializers.CharField(
        required=False, help_text="The guest's address (or the SSH host), once known."
    )


class RunCommandSerializer(StrictInputSerializer):
    aliases = {"timeout_sec": "timeout_seconds"}
    command = serializers.CharField(trim_whitespace=False, allow_blank=True, max_length=1_000_000)
    timeout_seconds = serializers.IntegerField(required=False, allow_null=True, default=None)
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        default=dict,
    )
    cwd = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)


class CommandSerializer(AnswerSerializer):
    sandbox_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = Command
        fields = [
            "id",
            "sandbox_id",
            "command",
            "env",
            "cwd",
            "timeout_seconds",
            "status",
            "exit_code",
            "stdout",
            "stderr",
            "stdout_truncated",
            "stderr_truncated",
            "timed_out",
            "duration_ms",
            "error",
            "started_at",
            "finished_at",
        ]


class CommandResultSerializer(serializers.Serializer):
    command = CommandSerializer()


class SandboxDetailSerializer(serializers.Serializer):
    """One sandbox; with `include_commands` also its command history."""

    sandbox = SandboxSerializer()
    commands = CommandSerializer(
        many=True, required=False, help_text="With ?include_commands=true: the last 500."
    )


class SourceVMSerializer(AnswerSerializer):
    host = serializers.CharField(source="host.name", read_only=True, allow_null=True)

    class Meta:
        model = SourceVM
        fields = [
            "name",
            "kind",
            "host",
            "disk_path",
            "disk_format",
            "domain_name",
            "description",
            "enabled",
        ]


class HostSerializer(AnswerSerializer):
    alive = serializers.BooleanField(source="is_alive", read_only=True)

    class Meta:
        model = Host
        fields = [
            "name",
            "queue_name",
            "capacity",
            "enabled",
            "last_heartbeat",
            "domain_type",
            "alive",
        ]


class HostGuestsSerializer(serializers.Serializer):
    running = serializers.IntegerField(allow_null=True, help_text="Its domains running or paused.")
    memory_mb = serializers.IntegerField(
        allow_null=True, help_text="The sum of their configured memory."
    )
    rss_mb = serializers.IntegerField(
        allow_null=True, help_text="The sum of their QEMU processes' resident memory."
    )


class HostResourcesSerializer(serializers.Serializer):
    memory_total_mb = serializers.IntegerField(allow_null=True)
    memory_available_mb = serializers.IntegerField(allow_null=True)
    cpus = serializers.IntegerField(allow_null=True)
    disk_total_mb = serializers.IntegerField(
        allow_null=True, help_text="The filesystem of the host's sandbox directory."
    )
    disk_free_mb = serializers.IntegerField(allow_null=True)
    guests = HostGuestsSerializer(allow_null=True)


class HostStatusSerializer(serializers.Serializer):
    name = serializers.CharField(source="host.name")
    queue_name = serializers.CharField(source="host.queue_name")
    enabled = serializers.BooleanField(source="host.enabled")
    draining = serializers.BooleanField(source="host.draining")
    alive = serializers.BooleanField(source="host.is_alive")
    last_heartbeat = serializers.DateTimeField(source="host.last_heartbeat", allow_null=True)
    domain_type = serializers.CharField(source="host.domain_type")
    capacity = serializers.IntegerField(
        source="host.capacity", allow_null=True, help_text="Count cap; null: none."
    )
    memory_overcommit = serializers.FloatField(
        source="host.memory_overcommit",
        allow_null=True,
        help_text="The host's own overcommit ratio; null: the setting's.",
    )
    overcommit_ratio = serializers.FloatField(source="room.ratio", help_text="The ratio in force.")
    resources = HostResourcesSerializer(
        source="host.resources", help_text="As the worker's last heartbeat reported them."
    )
    memory_limit_mb = serializers.IntegerField(
        source="room.limit_mb",
        allow_null=True,
        help_text="overcommit_ratio × memory; null until the worker reports its memory.",
    )
    committed_memory_mb = serializers.IntegerField(
        source="room.committed_mb", help_text="Memory of its sandboxes that hold memory."
    )
    free_memory_mb = serializers.IntegerField(
        source="room.free_mb", allow_null=True, help_text="memory_limit_mb − committed_memory_mb."
    )
    holding_memory = serializers.IntegerField(
        source="room.holding", help_text="Its sandboxes that hold memory (the cap counts these)."
    )
    accepting = serializers.BooleanField(
        help_text="A sandbox of the default size would be placed here now (enabled, not "
        "draining, alive, with room)."
    )
    sandboxes = serializers.DictField(
        child=serializers.IntegerField(), help_text="Its sandboxes by state, destroyed left out."
    )


class HostListSerializer(serializers.Serializer):
    hosts = HostStatusSerializer(many=True)


class VMListSerializer(serializers.Serializer):
    vms = SourceVMSerializer(many=True)
    hosts = HostSerializer(many=True)


class HealthSerializer(serializers.Serializer):
    status = serializers.CharField()
    database = serializers.CharField()
    broker = serializers.CharField()
    hosts = HostSerializer(many=True)
