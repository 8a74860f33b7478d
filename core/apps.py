from django.apps import AppConfig


class CoreConfig(AppConfig):
    """What every app shares; imports no other app of the project."""

    name = "core"
