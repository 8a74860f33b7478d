"""Playbooks generated from a sandbox's diff, their versions (operators may edit), and the
runs made of them (replay verification, dry runs, applies)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Playbook(models.Model):
    """The playbook for the change from snapshot `from_name` to snapshot `to_name`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sandbox = models.ForeignKey("sandboxes.Sandbox", on_delete=models.CASCADE, related_name="playbooks")
    from_name = models.CharField(max_length=64)
    to_name = models.CharField(max_length=64)
    status = models.CharField(max_length=10, default="pending")  # pending, ready, failed
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "sandboxes"
        constraints = [
            models.UniqueConstraint(fields=["sandbox", "from_name", "to_name"], name="one_playbook_per_change")
        ]

    def __str__(self) -> str:
        return f"{self.sandbox.name}: {self.from_name} -> {self.to_name}"

    @property
    def latest(self) -> PlaybookVersion | None:
        return self.versions.order_by("-number").first()


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
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "sandboxes"
        ordering = ["playbook", "number"]
        constraints = [
            models.UniqueConstraint(fields=["playbook", "number"], name="unique_playbook_version")
        ]

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
        app_label = "sandboxes"
        constraints = [models.UniqueConstraint(fields=["version", "name"], name="unique_playbook_file")]

    def __str__(self) -> str:
        return self.name
