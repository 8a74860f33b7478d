"""Rows for KVM hosts, golden sources, sandboxes, their slow operations and commands.

Models hold fields, constraints and pure helpers only: every write goes through
`sandboxes.services`, and nothing here touches the network.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from core import queues
from core.conf import vsb
from core.queues import Work

from . import choices
from .choices import OperationStatus, SandboxState

host_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$", "Lower-case letters, digits and dashes, up to 63."
)

TRANSITIONAL_STATES = (
    SandboxState.REQUESTED,
    SandboxState.QUEUED,
    SandboxState.PROVISIONING,
    SandboxState.BOOTING,
    SandboxState.WAITING_FOR_IP,
    SandboxState.STOPPING,
    SandboxState.RESTORING,
    SandboxState.DESTROYING,
)


class Host(models.Model):
    """A KVM host. Its lifecycle pool consumes `queue_name` and refreshes `last_heartbeat`;
    its commands and terminals pools consume their own queues (`core.queues`)."""

    name = models.CharField(max_length=63, unique=True, validators=[host_name_validator])
    libvirt_uri = models.CharField(max_length=255, default="qemu:///system")
    queue_name = models.CharField(max_length=80, unique=True, editable=False)
    capacity = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Most sandboxes holding memory (not stopped, destroyed or in error) this "
        "host accepts; blank: no count cap, its memory decides (sandboxes/capacity.py).",
    )
    memory_overcommit = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(10.0)],
        help_text="Committed guest memory may reach this × the host's memory; blank: "
        "VSB_MEMORY_OVERCOMMIT.",
    )
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(
        default=False,
        help_text="Takes no new sandboxes (nor forks); the ones it holds keep working.",
    )
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    domain_type = models.CharField(
        max_length=8, blank=True, help_text="kvm or qemu (TCG), as the worker found it."
    )
    resources = models.JSONField(
        default=dict,
        blank=True,
        help_text="Memory, CPUs, disk and guests, as the worker's last heartbeat reported "
        "them (the shape: sandboxes/capacity.py).",
    )
    # The host's own VSB_SANDBOX_DIR and VSB_PORT_RANGE, as its worker reported them when it
    # started: a create on the control plane gives the sandbox its workdir and SSH port from
    # these, not from its own settings (docs/fleet.md). Empty: the control plane's.
    sandbox_dir = models.CharField(
        max_length=500, blank=True, help_text="Where its worker keeps sandbox disks."
    )
    port_range_start = models.PositiveIntegerField(null=True, blank=True)
    port_range_end = models.PositiveIntegerField(null=True, blank=True)
    boot_slots = models.PositiveSmallIntegerField(
        default=0,
        help_text="Guests this host boots at once, as its worker reported it from its cores and "
        "domain type (VSB_BOOT_CONCURRENCY overrides); 0: not reported yet.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        permissions = [("drain_host", "Can drain and undrain a host")]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        self.queue_name = self.queue_for(self.name)
        super().save(*args, **kwargs)

    @staticmethod
    def queue_for(name: str, work: Work = Work.LIFECYCLE) -> str:
        """The queue of `work` on the host named `name` (`core.queues.queue_for`)."""
        return queues.queue_for(work, name)

    def port_range(self) -> tuple[int, int]:
        """The ports its guests' SSH forwards are taken from (inclusive)."""
        if self.port_range_start and self.port_range_end:
            return (self.port_range_start, self.port_range_end)
        return vsb("PORT_RANGE")

    def workdir_for(self, sandbox_name: str) -> str:
        """The directory of a sandbox's disk and console log on this host."""
        return f"{(self.sandbox_dir or vsb('SANDBOX_DIR')).rstrip('/')}/{sandbox_name}"

    def is_alive(self, within_seconds: float | None = None) -> bool:
        """Whether its lifecycle pool beat in the last `within_seconds` (by default
        VSB_HOST_DEAD_SECONDS): a worker serves its queues."""
        if within_seconds is None:
            within_seconds = vsb("HOST_DEAD_SECONDS")
        return bool(
            self.last_heartbeat
            and self.last_heartbeat > timezone.now() - timedelta(seconds=within_seconds)
        )

    def unavailable_reason(self) -> str:
        """Why the host's sandboxes cannot be reached now, for people: empty while its
        worker is alive."""
        if self.is_alive():
            return ""
        if self.last_heartbeat is None:
            return f"host {self.name} has no live worker (it never sent a heartbeat)"
        silent = (timezone.now() - self.last_heartbeat).total_seconds()
        return (
            f"host {self.name} has no live worker (last heartbeat "
            f"{self.last_heartbeat.isoformat(timespec='seconds')}, {silent:.0f} s ago)"
        )


class SourceVM(models.Model):
    """A golden VM that sandboxes are linked clones of: a disk image with a kernel to boot
    directly (the project's own `debian-base`), or a shut-off libvirt domain."""

    name = models.CharField(
        max_length=100,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "Letters, digits, ._-")],
    )
    kind = models.CharField(
        max_length=10, choices=choices.SourceKind.choices, default=choices.SourceKind.IMAGE
    )
    host = models.ForeignKey(
        Host,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        help_text="Host that holds the disk; empty when every host has it at the same path.",
    )
    disk_path = models.CharField(max_length=500, blank=True)
    disk_format = models.CharField(max_length=10, default="qcow2")
    domain_name = models.CharField(max_length=100, blank=True)
    kernel = models.CharField(max_length=500, blank=True)
    initrd = models.CharField(max_length=500, blank=True)
    cmdline = models.CharField(max_length=1000, blank=True)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "source VM"

    def __str__(self) -> str:
        return self.name


class Sandbox(models.Model):
    """One disposable VM: a linked clone of a SourceVM on one Host, owned by one agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=63, unique=True)
    agent_id = models.CharField(max_length=200, help_text="The caller's own label for its agent.")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sandboxes"
    )
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="sandboxes")
    source = models.ForeignKey(SourceVM, on_delete=models.PROTECT, related_name="sandboxes")
    state = models.CharField(
        max_length=20, choices=SandboxState.choices, default=SandboxState.REQUESTED, db_index=True
    )
    state_changed_at = models.DateTimeField(default=timezone.now)
    error = models.TextField(blank=True)
    vcpus = models.PositiveSmallIntegerField(default=1)
    memory_mb = models.PositiveIntegerField(default=256)
    ttl_seconds = models.PositiveIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    network_mode = models.CharField(
        max_length=20, choices=choices.NetworkMode.choices, default=choices.NetworkMode.PORT_FORWARD
    )
    ssh_host = models.CharField(max_length=255, blank=True)
    ssh_port = models.PositiveIntegerField(null=True, blank=True)
    ssh_username = models.CharField(max_length=32, default="root")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    mac_address = models.CharField(max_length=17, blank=True)
    host_key = models.TextField(blank=True, help_text="Pinned SSH host key of the guest.")
    workdir = models.CharField(max_length=500, blank=True)
    forked_from = models.ForeignKey(
        "Snapshot",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="forks",
        help_text="The snapshot of another sandbox this one branched from.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # The last command, terminal or file operation (sandboxes/idle.py: written at most every
    # few seconds); the idle sweep pauses, then hibernates, a sandbox unused for long.
    last_used_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(
        null=True, blank=True, help_text="When it joined its host's boot queue (FIFO order)."
    )
    queue_position = models.PositiveIntegerField(
        null=True, blank=True, help_text="1 = booted next; null unless queued."
    )
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A forwarded port belongs to one live sandbox per host.
            models.UniqueConstraint(
                fields=["host", "ssh_port"],
                condition=Q(ssh_port__isnull=False) & ~Q(state="destroyed"),
                name="unique_live_port_per_host",
            ),
        ]
        indexes = [models.Index(fields=["owner", "state"])]

    def __str__(self) -> str:
        return self.name

    @property
    def principal(self) -> str:
        """The only SSH certificate principal this sandbox's guest accepts."""
        return f"sandbox-{self.id.hex}"

    @property
    def is_live(self) -> bool:
        return self.state not in (SandboxState.DESTROYED,)


snapshot_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "1-64 letters, digits and ._- (not starting with . - _)"
)


class Snapshot(models.Model):
    """A checkpoint of a sandbox: an internal qcow2 snapshot of its disk, with the guest's
    memory when it was taken while running."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sandbox = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=64, validators=[snapshot_name_validator])
    description = models.TextField(blank=True)
    status = models.CharField(
        max_length=10,
        choices=choices.SnapshotStatus.choices,
        default=choices.SnapshotStatus.CREATING,
    )
    has_memory = models.BooleanField(default=False)
    domain_state = models.CharField(max_length=16, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    taken_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["sandbox", "name"], name="unique_snapshot_name"),
        ]

    def __str__(self) -> str:
        return f"{self.sandbox.name}@{self.name}"


class Operation(models.Model):
    """One slow step done by a worker: what clients poll and the UI shows."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=20, choices=choices.OperationKind.choices)
    status = models.CharField(
        max_length=12,
        choices=OperationStatus.choices,
        default=OperationStatus.PENDING,
        db_index=True,
    )
    sandbox = models.ForeignKey(
        Sandbox, null=True, blank=True, on_delete=models.CASCADE, related_name="operations"
    )
    snapshot = models.ForeignKey(
        "Snapshot", null=True, blank=True, on_delete=models.SET_NULL, related_name="operations"
    )
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="operations")
    queue = models.CharField(max_length=80)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    attempt = models.PositiveSmallIntegerField(default=0)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100")
    message = models.CharField(max_length=300, blank=True, help_text="Current step, for people.")
    error = models.TextField(blank=True)
    input = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life: a claim, progress, a beat, a resend."
    )
    held_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="A worker runs its task now and beats until then: no second claim.",
    )
    resends = models.PositiveSmallIntegerField(
        default=0, help_text="Times its task was sent again because it was lost."
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["host", "status"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.status}"

    @property
    def is_done(self) -> bool:
        return self.status in (
            OperationStatus.SUCCEEDED,
            OperationStatus.FAILED,
            OperationStatus.ERRORED,
        )


class Command(models.Model):
    """A command run in a sandbox over SSH, with its separate output streams."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sandbox = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="commands")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    command = models.TextField()
    env = models.JSONField(default=dict, blank=True)
    cwd = models.CharField(max_length=1000, blank=True)
    timeout_seconds = models.PositiveIntegerField()
    status = models.CharField(
        max_length=12, choices=choices.CommandStatus.choices, default=choices.CommandStatus.RUNNING
    )
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    stdout_truncated = models.BooleanField(default=False)
    stderr_truncated = models.BooleanField(default=False)
    timed_out = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(
        null=True, blank=True, help_text="When a worker took it (it runs at most once)."
    )
    heartbeat_at = models.DateTimeField(
        default=timezone.now,
        help_text="Last sign of life: sent, resent, or its worker's beat while it runs.",
    )
    resends = models.PositiveSmallIntegerField(
        default=0, help_text="Times its task was sent again because no worker took it."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at"]
        indexes = [models.Index(fields=["sandbox", "started_at"])]

    def __str__(self) -> str:
        return self.command[:60]
