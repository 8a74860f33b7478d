"""Diffs between snapshots, the playbooks generated from them, their versions (operators may
edit), inventories, and the runs made of them (dry runs, applies). The tables keep the names
they had when these models lived in the sandboxes app (migrations/0001_initial.py)."""

from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.db import models
from django.utils.functional import cached_property

from .choices import RUN_DONE, ResultStatus, RunKind, RunStatus


def _optional(
    to: str, on_delete, related_name: str = "+", kind=models.ForeignKey
) -> models.ForeignKey:
    """A link that may be empty: its row went (SET_NULL), or there was none to make."""
    return kind(to, null=True, blank=True, on_delete=on_delete, related_name=related_name)


def _person() -> models.ForeignKey:
    """Who made or asked for a row; the row stays (with none) when their account goes."""
    return _optional(settings.AUTH_USER_MODEL, models.SET_NULL)


def _moment() -> models.DateTimeField:
    """When something happened that may not have happened yet (a start, a finish)."""
    return models.DateTimeField(null=True, blank=True)


def _numbered_within(parent: str, number: str, name: str) -> tuple[list, list]:
    """Meta `ordering` and `constraints` of rows numbered within a parent (the versions of a
    playbook, the events of a run): listed in that order, each number once."""
    return [parent, number], [models.UniqueConstraint(fields=[parent, number], name=name)]


class MadeFromSnapshots(models.Model):
    """What an operation makes on a sandbox's host from two of its states (a diff, a
    playbook): the states by name, its status while it is being made, why it failed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sandbox = models.ForeignKey(
        "sandboxes.Sandbox", on_delete=models.CASCADE, related_name="%(class)ss"
    )
    from_name = models.CharField(max_length=64)
    to_name = models.CharField(max_length=64)
    status = models.CharField(
        max_length=10, choices=ResultStatus.choices, default=ResultStatus.PENDING
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.sandbox.name}: {self.from_name} -> {self.to_name}"


class Diff(MadeFromSnapshots):
    """What changed in a sandbox between two states (snapshots, or "now"), computed on the
    host from the snapshots' disks. Diffs between two snapshots never change, so they are kept
    and served again: keyed by the snapshots themselves, not their names, so a snapshot
    deleted and taken again under the same name never gets the old diff, and deleting a
    snapshot deletes the diffs made from it."""

    NOW = "now"

    from_snapshot = _optional("sandboxes.Snapshot", models.CASCADE)
    to_snapshot = _optional("sandboxes.Snapshot", models.CASCADE)  # None for "now"
    # JSON text, not jsonb: file names that are not UTF-8 travel as \udcXX escapes.
    result = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        db_table = "sandboxes_diff"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["sandbox", "from_name", "to_name"])]

    @cached_property
    def content(self) -> dict:
        """The stored result (of a ready diff), parsed."""
        return json.loads(self.result)


class Playbook(MadeFromSnapshots):
    """The playbook for the change from snapshot `from_name` to snapshot `to_name`: keyed by
    the snapshots themselves. When one of them is deleted its link is cleared (the playbook
    and its versions stay, as the record of what was reviewed and applied) and a later
    request for the same names, even of a snapshot taken again under one of them, makes a
    new playbook."""

    from_snapshot = _optional("sandboxes.Snapshot", models.SET_NULL)
    to_snapshot = _optional("sandboxes.Snapshot", models.SET_NULL)
    created_by = _person()

    class Meta:
        db_table = "sandboxes_playbook"
        constraints = [
            models.UniqueConstraint(
                fields=["sandbox", "from_snapshot", "to_snapshot"],
                name="one_playbook_per_snapshot_pair",
            )
        ]

    @property
    def latest(self) -> PlaybookVersion | None:
        return self.versions.order_by("-number").first()

    @property
    def version_numbers(self) -> list[int]:
        return list(self.versions.values_list("number", flat=True))


class PlaybookVersion(models.Model):
    """One text of the playbook. Version 1 is generated; later ones are operators' edits.
    Never changed once written: an approval pins a version by id and sha256."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    playbook = models.ForeignKey(Playbook, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    yaml = models.TextField()
    sha256 = models.CharField(max_length=64)
    generated = models.BooleanField(default=False)
    warnings = models.JSONField(default=list, blank=True)
    skipped = models.JSONField(default=list, blank=True)
    syntax_ok = models.BooleanField(null=True)
    syntax_output = models.TextField(blank=True)
    note = models.TextField(blank=True)
    created_by = _person()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "sandboxes_playbookversion"
        ordering, constraints = _numbered_within("playbook", "number", "unique_playbook_version")

    def __str__(self) -> str:
        return f"{self.playbook} v{self.number}"


class PlaybookFile(models.Model):
    """A file the playbook ships under files/ (a .deb, a binary, a large file)."""

    version = models.ForeignKey(PlaybookVersion, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=255)
    content = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()

    class Meta:
        db_table = "sandboxes_playbookfile"
        constraints = [
            models.UniqueConstraint(fields=["version", "name"], name="unique_playbook_file")
        ]

    def __str__(self) -> str:
        return self.name


class Inventory(models.Model):
    """Production targets an approved playbook may be applied to."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    variables = models.JSONField(default=dict, blank=True)
    created_by = _person()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "sandboxes_inventory"
        verbose_name_plural = "inventories"
        # Who may see inventories, their variables and the runs against them
        # (docs/playbooks.md "Who may do what"): view_inventory, add_inventory, run_inventory.
        permissions = [
            ("run_inventory", "Can run playbooks (dry runs and applies) against inventories")
        ]

    def __str__(self) -> str:
        return self.name


class InventoryHost(models.Model):
    """One target: an SSH endpoint with a pinned host key and an encrypted private key (never
    returned by the API), or one of our sandboxes (reached with a short-lived certificate)."""

    inventory = models.ForeignKey(Inventory, on_delete=models.CASCADE, related_name="hosts")
    name = models.CharField(max_length=100)
    address = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(default=22)
    user = models.CharField(max_length=64, default="root")
    groups = models.JSONField(default=list, blank=True)
    variables = models.JSONField(default=dict, blank=True)
    host_key = models.TextField(blank=True, help_text="Pinned: 'ssh-ed25519 AAAA...'.")
    private_key_encrypted = models.TextField(blank=True)
    certificate = models.TextField(blank=True)
    sandbox = _optional("sandboxes.Sandbox", models.SET_NULL)

    class Meta:
        db_table = "sandboxes_inventoryhost"
        constraints = [
            models.UniqueConstraint(fields=["inventory", "name"], name="unique_inventory_host")
        ]

    def __str__(self) -> str:
        return f"{self.inventory.name}/{self.name}"

    @property
    def has_private_key(self) -> bool:
        return bool(self.private_key_encrypted)


class PlaybookRun(models.Model):
    """A dry run (check) or an apply of one playbook version to one inventory."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.ForeignKey(PlaybookVersion, on_delete=models.PROTECT, related_name="runs")
    inventory = models.ForeignKey(Inventory, on_delete=models.PROTECT, related_name="runs")
    kind = models.CharField(max_length=10, choices=RunKind.choices)
    status = models.CharField(
        max_length=12, choices=RunStatus.choices, default=RunStatus.PENDING, db_index=True
    )
    approval = _optional(
        "approvals.ApprovalRequest", models.PROTECT, "playbook_run", kind=models.OneToOneField
    )
    queue = models.CharField(max_length=80)
    requested_by = _person()
    cancel_requested = models.BooleanField(default=False)
    host_stats = models.JSONField(default=dict, blank=True)
    failed_tasks = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    events_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = _moment()
    finished_at = _moment()

    class Meta:
        db_table = "sandboxes_playbookrun"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.version} -> {self.inventory} ({self.status})"

    @property
    def is_done(self) -> bool:
        return self.status in RUN_DONE


class PlaybookEvent(models.Model):
    """One ansible-runner event of a run, in order (`seq`), as streamed over the websocket."""

    run = models.ForeignKey(PlaybookRun, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    event = models.CharField(max_length=50)
    host = models.CharField(max_length=255, blank=True)
    task = models.CharField(max_length=500, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "sandboxes_playbookevent"
        ordering, constraints = _numbered_within("run", "seq", "unique_playbook_event_seq")

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.event}"
