from django.db import models


class ApprovalStatus(models.TextChoices):
    """Pending until decided, cancelled or expired; each of those is final."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    # Nobody decided in time: not the same as a "no".
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class ApprovalKind(models.TextChoices):
    """A free-text question, or an action (`action_type`, `payload`) an approval allows once."""

    QUESTION = "question"
    ACTION = "action"


# Action types only the server opens (ApprovalOrigin.SYSTEM) and only the server consumes.
# Asking for one through a public route is a 400 naming `action_type` (or `payload` when its
# "action" names one). A feature that gates an action on an approval adds its type here:
# egress requests did (egress.choices.GRANT_ACTION).
RESERVED_ACTION_TYPES: frozenset[str] = frozenset({"apply_playbook", "egress_grant"})


def is_reserved_action(value) -> bool:
    """Compared case- and space-insensitively: a look-alike is refused as well."""
    return isinstance(value, str) and value.strip().lower() in RESERVED_ACTION_TYPES


class ApprovalOrigin(models.TextChoices):
    """Who opened the request."""

    # Asked through a public route (/v1/approvals, /api/v1/human/ask, ask-async): by an agent
    # or anyone with a key. Such a request can answer a question; it never unlocks an action
    # the server reserves for itself.
    CALLER = "caller"
    # Opened by the server's own service layer for an action it is about to take (an apply).
    SYSTEM = "system"


class Urgency(models.TextChoices):
    """How soon the requester needs an answer: shown to operators, it moves no deadline."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
