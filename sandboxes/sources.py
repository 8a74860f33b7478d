"""Registering golden sources (SourceVM rows)."""

from __future__ import annotations

from pathlib import Path

from core.errors import InvalidInput

from .choices import SourceKind
from .models import SourceVM


def register_image(name: str, image_dir: Path, manifest: dict) -> list[SourceVM]:
    """Register a built guest image twice: `name` boots the fast busybox init, and
    `name-systemd` boots full systemd (for work that needs real units)."""
    common = {
        "kind": SourceKind.IMAGE,
        "disk_path": str(image_dir / "base.qcow2"),
        "disk_format": "qcow2",
        "kernel": str(image_dir / "vmlinuz"),
        "initrd": str(image_dir / "initrd.img"),
        "enabled": True,
    }
    variants = [
        (
            name,
            manifest["fast_cmdline"],
            "Debian 12, busybox init (boots to SSH in ~6 s under TCG)",
        ),
        (
            f"{name}-systemd",
            manifest["systemd_cmdline"],
            "Debian 12, systemd (boots to SSH in ~13 s under TCG)",
        ),
    ]
    rows = []
    for row_name, cmdline, description in variants:
        row, _ = SourceVM.objects.update_or_create(
            name=row_name,
            defaults={
                **common,
                "cmdline": cmdline,
                "description": f"{description}; image {manifest.get('key', '')}",
            },
        )
        rows.append(row)
    return rows


def register_domain(name: str, domain_name: str, description: str = "") -> SourceVM:
    """Register a shut-off libvirt domain as a golden VM; clones are overlays on its disk."""
    if not domain_name:
        raise InvalidInput.field("domain_name", "is required.")
    row, _ = SourceVM.objects.update_or_create(
        name=name,
        defaults={
            "kind": SourceKind.DOMAIN,
            "domain_name": domain_name,
            "description": description,
        },
    )
    return row
