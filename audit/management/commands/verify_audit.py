from django.core.management.base import BaseCommand, CommandError

from audit import services


class Command(BaseCommand):
    help = "Check the audit trail's hash chain; names the first event that was changed or removed."

    def handle(self, *args, **options):
        verdict = services.verify()
        if not verdict.ok:
            raise CommandError(
                f"audit chain broken at event #{verdict.first_broken_seq}: {verdict.reason} "
                f"({verdict.checked} events before it are intact)"
            )
        self.stdout.write(f"audit chain intact: {verdict.checked} events")
