"""Events Django raises elsewhere that belong in the audit trail: logins and admin actions."""

from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_save
from django.dispatch import receiver

from . import services

ADMIN_VERBS = {ADDITION: "admin.add", CHANGE: "admin.change", DELETION: "admin.delete"}


@receiver(user_logged_in)
def on_login(sender, request, user, **kwargs):
    services.record("auth.login", user=user, target=user)


@receiver(user_logged_out)
def on_logout(sender, request, user, **kwargs):
    if user is not None:
        services.record("auth.logout", user=user, target=user)


@receiver(user_login_failed)
def on_login_failed(sender, credentials, request=None, **kwargs):
    # The password is never recorded: only which name was tried.
    services.record(
        "auth.login_failed",
        actor="anonymous",
        data={"username": str(credentials.get("username", ""))[:150]},
    )


@receiver(post_save, sender=LogEntry)
def on_admin_action(sender, instance: LogEntry, created: bool, **kwargs):
    if not created:
        return
    services.record(
        ADMIN_VERBS.get(instance.action_flag, "admin.action"),
        user=instance.user,
        target_type=instance.content_type.model if instance.content_type_id else "",
        target_id=str(instance.object_id or "")[:100],
        data={"object": instance.object_repr, "message": instance.get_change_message()},
    )
