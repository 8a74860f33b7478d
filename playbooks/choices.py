from django.db import models


class ResultStatus(models.TextChoices):
    """A diff or a playbook, made on the sandbox's host by an operation."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


class RunStatus(models.TextChoices):
    """ansible-runner's own outcomes, plus `error` for what is not the playbook's doing."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    CANCELED = "canceled"
    # The run's worker stopped, or something unexpected: not the playbook's own failure.
    ERROR = "error"


RUN_DONE = (RunStatus.SUCCESSFUL, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.ERROR)


class RunKind(models.TextChoices):
    """A dry run (`--check --diff`, no approval needed) or an approved apply."""

    CHECK = "check"
    APPLY = "apply"
