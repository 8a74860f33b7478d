from django.apps import AppConfig


class CoreConfig(AppConfig):
    """What every app shares; imports no other app of the project."""

    name = "core"

    def ready(self) -> None:
        from .api import paths

        paths.register()  # <vsb_uuid:...> in the apps' URL patterns
