from django.apps import AppConfig


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"

    def ready(self):
        from core import hooks

        # The worker's start-up and shutdown signal handlers (they only fire in a Celery
        # worker): connected here, so tasks and worker do not import each other.
        from . import services, worker  # noqa: F401

        # Lower apps (audit, approvals) ask which sandboxes a user may see through this hook.
        hooks.visible_sandboxes.register(services.visible_sandboxes)
