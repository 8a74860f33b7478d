from django.apps import AppConfig


class EgressConfig(AppConfig):
    name = "egress"
    verbose_name = "Egress"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core import hooks

        from . import services

        hooks.approval_decided.register(services.on_approval_decided)
