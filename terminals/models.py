"""Terminal sessions: tmux sessions on a sandbox's host whose panes run SSH into the guest.

The tmux server on the host is the truth for what panes exist; a row records who opened a
session and who has taken it over, and outlives the session as history."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from .tmux_driver import SESSION_NAME_RE, SESSION_NAME_RULE
from .tmux_driver import sandbox_hex_of as _sandbox_hex_of

session_name_validator = RegexValidator(rf"\A{SESSION_NAME_RE.pattern}\Z", SESSION_NAME_RULE)


class TerminalSession(models.Model):
    """One tmux session of one sandbox. `tmux_name` is unique on its host's tmux server."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sandbox = models.ForeignKey(
        "sandboxes.Sandbox", on_delete=models.CASCADE, related_name="terminal_sessions"
    )
    name = models.CharField(max_length=64, validators=[session_name_validator])
    tmux_name = models.CharField(max_length=128)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # An operator who took the keyboard: the owner's typing is refused until released.
    taken_over_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    taken_over_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # One open session per name in a sandbox; closed ones stay as history.
            models.UniqueConstraint(
                fields=["sandbox", "name"],
                condition=Q(closed_at__isnull=True),
                name="unique_open_terminal_name",
            )
        ]
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.sandbox_id}:{self.name}"

    @staticmethod
    def tmux_name_for(sandbox_id: uuid.UUID, name: str) -> str:
        return f"vsb-{sandbox_id.hex}-{name}"

    @staticmethod
    def sandbox_hex_of(tmux_name: str) -> str | None:
        """The sandbox a tmux session belongs to, from its name (`vsb-<hex>-<name>`)."""
        return _sandbox_hex_of(tmux_name)
