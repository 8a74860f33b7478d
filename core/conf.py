"""The one accessor of the service's own settings (`settings.VSB`, from the environment)."""

from __future__ import annotations

from django.conf import settings


def vsb(key: str):
    return settings.VSB[key]
