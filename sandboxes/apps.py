from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"

    def ready(self):
        # The worker's start-up and shutdown signal handlers (they only fire in a Celery
        # worker): connected here, so tasks and worker do not import each other.
        from audit.queries import register_owned_sandboxes

        from . import worker  # noqa: F401
        from .models import Sandbox

        register_owned_sandboxes(lambda user: Sandbox.objects.filter(owner=user).values("pk"))
