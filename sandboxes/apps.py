from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"

    def ready(self):
        # The worker's start-up and shutdown signal handlers (they only fire in a Celery
        # worker): connected here, so tasks and worker do not import each other.
        from . import worker  # noqa: F401
