"""Per-agent quotas (README "Limits"): how much one agent may hold at once, so that one
agent cannot take everything.

An agent is a user; its API keys carry the limits. A request is held to the limits of the key
it came with (a field left empty: the settings default `VSB_QUOTA_*`), and usage is counted
over the key's user, all its keys together. Work done for an agent without a key (a task
acting for it, e.g. a playbook verify's replica) gets the most generous of the agent's live
keys. Operators (staff users) have no quotas.

Each check locks the agent's user row (`SELECT ... FOR UPDATE`) and must run inside the
transaction that then writes the row it counts: two creates of one agent at once queue on
that lock, and the second one counts the first one's sandbox. (SQLite has no row locks, but
its transactions take the write lock when they begin, which serialises the same way.)

Which answer: a count of things the agent holds (sandboxes, memory, snapshots) is a 409
`quota_exceeded`: it must free one first; commands in flight are a 429 `quota_exceeded`:
they finish by themselves, so waiting helps. Rates are throttled per key in the API
(accounts/api/throttling.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db.models import Count, Sum
from django.utils import timezone

from accounts.models import ApiKey
from core.conf import vsb
from core.errors import QuotaExceeded, TooManyRequests

from .choices import CommandStatus, SandboxState
from .models import Command, Sandbox, Snapshot

# Each quota: the ApiKey field that sets it and the setting of its default.
QUOTAS = {
    "max_sandboxes": "QUOTA_MAX_SANDBOXES",
    "max_memory_mb": "QUOTA_MAX_MEMORY_MB",
    "max_snapshots_per_sandbox": "QUOTA_MAX_SNAPSHOTS_PER_SANDBOX",
    "max_concurrent_commands": "QUOTA_MAX_CONCURRENT_COMMANDS",
}


@dataclass(frozen=True)
class Quota:
    """One limit that applies to a request, and where it comes from (for the message)."""

    name: str
    limit: int
    origin: str  # "key 'ci'", or the setting of the default

    def __str__(self) -> str:
        return f"quota {self.name} = {self.limit}, {self.origin}"


def quota(user, key: ApiKey | None, name: str) -> Quota | None:
    """The limit `name` for `user` calling with `key`; None for an operator (no quota)."""
    if user.is_staff:
        return None
    setting = QUOTAS[name]
    if key is None:
        keys = ApiKey.objects.filter(user=user, revoked_at__isnull=True)
        found = [quota(user, k, name) for k in keys]
        return max(found, key=lambda q: q.limit) if found else _default(name, setting)
    own = getattr(key, name)
    if own is None:
        return _default(name, setting)
    return Quota(name, own, f"set on key {key.name or key.prefix!r}")


def _default(name: str, setting: str) -> Quota:
    return Quota(name, vsb(setting), f"the default VSB_{setting}")


def default_ttl_seconds(key: ApiKey | None) -> int | None:
    """The TTL of a sandbox created without one: the key's own, else VSB_DEFAULT_TTL_SECONDS,
    capped at VSB_MAX_TTL_SECONDS; None for none (a setting of 0)."""
    ttl = key.default_ttl_seconds if key is not None else None
    if ttl is None:
        ttl = vsb("DEFAULT_TTL_SECONDS")
    return min(ttl, vsb("MAX_TTL_SECONDS")) or None


def _lock(user) -> None:
    """Hold the agent's user row until the caller's transaction ends (fails outside one)."""
    list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))


def check_sandbox(user, key: ApiKey | None, memory_mb: int) -> None:
    """May the agent add a sandbox of `memory_mb` MiB? QuotaExceeded (409) if not. Call it in
    the transaction that inserts the sandbox."""
    count, memory = quota(user, key, "max_sandboxes"), quota(user, key, "max_memory_mb")
    if count is None or memory is None:
        return
    _lock(user)
    live = (
        Sandbox.objects.filter(owner=user)
        .exclude(state=SandboxState.DESTROYED)
        .aggregate(n=Count("pk"), mb=Sum("memory_mb"))
    )
    if live["n"] >= count.limit:
        raise QuotaExceeded(
            f"live sandboxes: {live['n']} of {count.limit} in use ({count}); destroy one first."
        )
    used = live["mb"] or 0
    if used + memory_mb > memory.limit:
        raise QuotaExceeded(
            f"memory: {used} of {memory.limit} MiB in use by live sandboxes, {memory_mb} more "
            f"asked ({memory}); ask for less or destroy a sandbox first.",
            field="memory_mb",
        )


def check_snapshot(user, key: ApiKey | None, sandbox: Sandbox) -> None:
    """May the agent add a snapshot to `sandbox`? QuotaExceeded (409) if not. Call it in the
    transaction that inserts the snapshot."""
    limit = quota(user, key, "max_snapshots_per_sandbox")
    if limit is None:
        return
    _lock(user)
    held = Snapshot.objects.filter(sandbox=sandbox).count()
    if held >= limit.limit:
        raise QuotaExceeded(
            f"snapshots of sandbox {sandbox.name}: {held} of {limit.limit} ({limit}); "
            "delete one first."
        )


def check_command(user, key: ApiKey | None) -> None:
    """May the agent start one more command? TooManyRequests (429, `quota_exceeded`) if not.
    Call it in the transaction that inserts the command. A row still `running` long past any
    command's timeout (its worker died) no longer counts."""
    limit = quota(user, key, "max_concurrent_commands")
    if limit is None:
        return
    _lock(user)
    stale = timezone.now() - timedelta(seconds=vsb("MAX_COMMAND_TIMEOUT_SECONDS") + 120)
    running = Command.objects.filter(
        requested_by=user, status=CommandStatus.RUNNING, started_at__gt=stale
    ).count()
    if running >= limit.limit:
        raise TooManyRequests(
            f"concurrent commands: {running} of {limit.limit} running ({limit}); "
            "wait for one to finish.",
            code="quota_exceeded",
        )
