"""Create (or reuse) an agent user and print a new API key for it."""

from django.core.management.base import BaseCommand

from accounts import services


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--key-name", default="cli")
        parser.add_argument(
            "--revoke-others",
            action="store_true",
            help="Revoke this agent's earlier keys with the same name.",
        )

    def handle(self, *args, username, key_name, revoke_others, **options):
        _, secret = services.issue_agent_key(username, key_name, revoke_others=revoke_others)
        self.stdout.write(secret)
