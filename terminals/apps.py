from django.apps import AppConfig


class TerminalsConfig(AppConfig):
    name = "terminals"

    def ready(self) -> None:
        from sandboxes import idle

        from . import services

        # A sandbox with an open terminal session may be paused, never hibernated.
        idle.register_blocker(services.sandboxes_with_open_sessions, pause=False)
