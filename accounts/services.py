"""The accounts service layer: the only writer of API keys. A key's secret is shown once
and never stored; issuing and revoking are audited."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from audit import services as audit

from .models import ApiKey

# A key's own limits (sandboxes/quotas.py); None: the settings default.
LIMIT_FIELDS = (
    "max_sandboxes",
    "max_memory_mb",
    "max_snapshots_per_sandbox",
    "max_concurrent_commands",
    "default_ttl_seconds",
)


def create_api_key(user, name: str = "", limits: dict | None = None) -> tuple[ApiKey, str]:
    """A new key for `user`, with `limits` (LIMIT_FIELDS; omitted: the defaults). The secret
    is returned once and never stored."""
    limits = {f: v for f, v in (limits or {}).items() if v is not None}
    prefix = secrets.token_hex(4)
    secret = f"vsb_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        user=user, name=name, prefix=prefix, key_hash=ApiKey.hash_secret(secret), **limits
    )
    audit.record(
        "apikey.issued",
        actor=audit.actor_of(user),
        target=key,
        data={"name": name, "prefix": prefix, **limits},
    )
    return key, secret


def revoke_api_keys(user, name: str) -> int:
    revoked = ApiKey.objects.filter(user=user, name=name, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if revoked:
        audit.record(
            "apikey.revoked",
            target_type="user",
            target_id=str(user.pk),
            data={"user": user.get_username(), "name": name, "count": revoked},
        )
    return revoked


def issue_agent_key(username: str, key_name: str, *, revoke_others: bool = False):
    """A new key for the agent user `username` (created, without a password, on first use);
    with `revoke_others`, its earlier keys of the same name stop working."""
    user, created = get_user_model().objects.get_or_create(username=username)
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if revoke_others:
        revoke_api_keys(user, key_name)
    return create_api_key(user, key_name)


def revoke_keys(keys, by=None) -> int:
    """Revoke these keys (those not revoked yet), one audit event each: the admin's action."""
    count = 0
    for key in keys.filter(revoked_at__isnull=True).select_related("user"):
        if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        ):
            count += 1
            audit.record(
                "apikey.revoked",
                user=by,
                target=key,
                data={
                    "user": key.user.get_username(),
                    "name": key.name,
                    "prefix": key.prefix,
                    "count": 1,
                },
            )
    return count


def update_api_key(key: ApiKey, *, name: str, limits: dict, by=None) -> None:
    """An operator's edit of a key (the admin): its name and its limits (LIMIT_FIELDS, None:
    the default). A change of limits is audited with the values before and after; it applies
    from the key's next request."""
    with transaction.atomic():
        before = ApiKey.objects.select_for_update().values(*LIMIT_FIELDS).get(pk=key.pk)
        key.name = name
        for field in LIMIT_FIELDS:
            setattr(key, field, limits.get(field))
        key.save(update_fields=["name", *LIMIT_FIELDS])
        changed = {
            f: [before[f], getattr(key, f)] for f in LIMIT_FIELDS if before[f] != getattr(key, f)
        }
        if changed:
            audit.record(
                "apikey.limits_changed",
                user=by,
                target=key,
                data={"user": key.user.get_username(), "prefix": key.prefix, "changed": changed},
            )


def authenticate_api_key(secret: str):
    """The user owning this key, or None for a malformed, unknown or revoked key."""
    key = api_key_for(secret)
    return key.user if key is not None else None


def api_key_for(secret: str) -> ApiKey | None:
    """The live key (its user loaded) this secret opens, or None for a malformed, unknown or
    revoked key, or one whose user is inactive."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != "vsb":
        return None
    key = (
        ApiKey.objects.select_related("user")
        .filter(prefix=parts[1], revoked_at__isnull=True)
        .first()
    )
    if key is None or not secrets.compare_digest(key.key_hash, ApiKey.hash_secret(secret)):
        return None
    if not key.user.is_active:
        return None
    now = timezone.now()
    # Touch at most once a minute: a write per request would cost every command call.
    if key.last_used_at is None or key.last_used_at < now - timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key
