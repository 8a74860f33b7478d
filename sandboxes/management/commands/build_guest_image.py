"""Build (or reuse from cache) the project's own Debian guest image and register it as the
source VMs `debian-base` (fast busybox init) and `debian-base-systemd` (full systemd)."""

import json
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from sandboxes import services


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--cache-dir", default=settings.VSB["IMAGE_CACHE"])
        parser.add_argument("--name", default="debian-base")

    def handle(self, *args, cache_dir, name, **options):
        script = Path(settings.BASE_DIR) / "scripts" / "build-guest-image.sh"
        proc = subprocess.run(
            ["bash", str(script), "--cache-dir", cache_dir],
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
        )
        if proc.returncode != 0:
            raise CommandError(
                f"guest image build failed (exit {proc.returncode}); see the log above"
            )
        image_dir = Path(proc.stdout.strip().splitlines()[-1])
        manifest = json.loads((image_dir / "manifest.json").read_text())
        for source in services.register_image(name, image_dir, manifest):
            self.stdout.write(f"registered source VM {source.name}: {source.disk_path}")
