"""Register a shut-off libvirt domain as a golden source VM."""

from django.core.management.base import BaseCommand

from sandboxes import services


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--domain", required=True, help="libvirt domain name of the golden VM")
        parser.add_argument("--description", default="")

    def handle(self, *args, name, domain, description, **options):
        row = services.register_domain(name, domain, description)
        self.stdout.write(f"registered source VM {row.name} (domain {row.domain_name})")
