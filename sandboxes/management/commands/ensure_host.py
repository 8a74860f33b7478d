"""Create the Host row for this machine (VSB_HOST_NAME) if it does not exist."""

from django.core.management.base import BaseCommand

from sandboxes import services


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args, **options):
        host = services.ensure_host()
        self.stdout.write(f"host {host.name} (queue {host.queue_name})")
