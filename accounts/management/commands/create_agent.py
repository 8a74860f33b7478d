"""Create (or reuse) an agent user and print a new API key for it."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from sandboxes import services


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
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        if revoke_others:
            services.revoke_api_keys(user, key_name)
        _, secret = services.create_api_key(user, key_name)
        self.stdout.write(secret)
