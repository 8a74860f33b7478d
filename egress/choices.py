from django.db import models

# The approval action an egress request opens (approvals.choices.RESERVED_ACTION_TYPES):
# only the server opens it, so an agent cannot grant itself network through /v1/approvals.
GRANT_ACTION = "egress_grant"


class RuleSource(models.TextChoices):
    """Where a sandbox's own rule came from (the settings' defaults are not stored)."""

    # Named in the create request: by an operator, or within VSB_EGRESS_SELF_SERVICE.
    CREATE = "create"
    # An egress request an operator approved; it expires.
    GRANT = "grant"
