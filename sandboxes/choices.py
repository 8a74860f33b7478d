from django.db import models


class SandboxState(models.TextChoices):
    REQUESTED = "requested"
    # Waiting for one of its host's boot slots (services.admit_boots): a create or start.
    QUEUED = "queued"
    PROVISIONING = "provisioning"
    BOOTING = "booting"
    WAITING_FOR_IP = "waiting_for_ip"
    READY = "ready"
    # Idle (docs/architecture.md, "Idle"): vCPUs stopped, memory kept; or memory saved to
    # disk (libvirt's managed save). Any call that needs the guest wakes it first.
    PAUSED = "paused"
    HIBERNATED = "hibernated"
    RESTORING = "restoring"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"
    ERROR = "error"


# The states in which the guest exists and can be woken: wherever the API accepts `ready` it
# accepts these too, and the worker wakes the sandbox before it uses the guest.
WAKEABLE_STATES = (SandboxState.READY, SandboxState.PAUSED, SandboxState.HIBERNATED)
IDLE_STATES = (SandboxState.PAUSED, SandboxState.HIBERNATED)


class OperationKind(models.TextChoices):
    CREATE = "create"
    START = "start"
    STOP = "stop"
    DESTROY = "destroy"
    SNAPSHOT = "snapshot"
    RESTORE = "restore"
    DELETE_SNAPSHOT = "delete_snapshot"
    DIFF = "diff"
    GENERATE_PLAYBOOK = "generate_playbook"
    VERIFY_PLAYBOOK = "verify_playbook"
    APPLY_PLAYBOOK = "apply_playbook"


# The kinds that move a sandbox through its lifecycle: only their stuck operations put the
# sandbox in error (a stuck diff or verify says nothing about the sandbox's own state).
LIFECYCLE_KINDS = frozenset(
    {
        OperationKind.CREATE,
        OperationKind.START,
        OperationKind.STOP,
        OperationKind.DESTROY,
        OperationKind.RESTORE,
    }
)


class OperationStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    # failed: an expected failure a person can act on; errored: a bug or the unexpected.
    FAILED = "failed"
    ERRORED = "errored"


class CommandStatus(models.TextChoices):
    RUNNING = "running"
    FINISHED = "finished"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


class SourceKind(models.TextChoices):
    IMAGE = "image", "disk image (direct kernel boot)"
    DOMAIN = "domain", "shut-off libvirt domain"


class NetworkMode(models.TextChoices):
    """How the host reaches the guest's sshd: a 127.0.0.1 port forward of QEMU's user
    network (the guest reaches nothing), or a NIC on a libvirt network or bridge."""

    PORT_FORWARD = "port_forward"
    NETWORK = "network"
    BRIDGE = "bridge"


class SnapshotStatus(models.TextChoices):
    """Only a ready snapshot can be restored, forked from or diffed."""

    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"
