"""Worker side of playbook generation: runs on the sandbox's host, where its disk is."""

from __future__ import annotations

import hashlib
import logging
import os

from django.db import transaction

from core import wakeups
from sandboxes.drivers.domain_xml import OVERLAY_NAME
from sandboxes.runtime import get_guest_reader

from . import generator, runner, runtime
from .diff_compute import stored_result
from .models import Playbook, PlaybookFile, PlaybookVersion
from .runner import write_project  # noqa: F401 - the runner lays projects out (and checks file names)
from .state import read_target_state, snapshot_pair

log = logging.getLogger(__name__)

FILE_LIMIT = 64 * 1024 * 1024


def syntax_check(yaml_text: str, files: dict[str, bytes]) -> tuple[bool, str]:
    """`ansible-playbook --syntax-check` templates play-level fields: isolated like a run."""
    return runner.syntax_check(yaml_text, files, isolation=runtime.ansible_isolation())


def store_version(
    playbook: Playbook,
    yaml_text: str,
    files: dict[str, bytes],
    *,
    user=None,
    generated: bool,
    warnings=(),
    skipped=(),
    note: str = "",
) -> PlaybookVersion:
    ok, output = syntax_check(yaml_text, files)
    with transaction.atomic():
        number = (
            playbook.versions.order_by("-number").values_list("number", flat=True).first() or 0
        ) + 1
        version = PlaybookVersion.objects.create(
            playbook=playbook,
            number=number,
            yaml=yaml_text,
            sha256=hashlib.sha256(yaml_text.encode()).hexdigest(),
            generated=generated,
            warnings=list(warnings),
            skipped=list(skipped),
            syntax_ok=ok,
            syntax_output=output,
            note=note,
            created_by=user,
        )
        for name, data in files.items():
            PlaybookFile.objects.create(
                version=version,
                name=name,
                content=data,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
    return version


def generate_and_store(playbook_id) -> None:
    playbook = (
        Playbook.objects.select_related("sandbox", "sandbox__host", "from_snapshot", "to_snapshot")
        .filter(pk=playbook_id)
        .first()
    )
    if playbook is None or playbook.status != "pending":
        return
    sandbox = playbook.sandbox
    try:
        from_snap, to_snap = snapshot_pair(playbook)
        diff = stored_result(sandbox, from_snap, to_snap)
        overlay = os.path.join(sandbox.workdir, OVERLAY_NAME)
        reader = get_guest_reader()
        with reader.snapshot_copies(overlay, [to_snap.name], sandbox.workdir) as images:
            state = read_target_state(
                reader, images[0], diff, inline_limit=generator.INLINE_LIMIT, file_limit=FILE_LIMIT
            )
        out = generator.generate(
            diff,
            state,
            title=f"Reproduce {sandbox.name} ({sandbox.agent_id}): {playbook.from_name} -> {playbook.to_name}",
            source=f"sandbox {sandbox.id} ({sandbox.source.name}), snapshots {playbook.from_name} -> {playbook.to_name}",
        )
        store_version(
            playbook,
            out.yaml,
            out.files,
            generated=True,
            warnings=out.warnings,
            skipped=out.skipped,
            user=playbook.created_by,
        )
        Playbook.objects.filter(pk=playbook.pk, status="pending").update(status="ready")
        status = "ready"
    except Exception as exc:  # noqa: BLE001 - the waiting request must get an answer
        log.exception("playbook %s failed", playbook_id)
        Playbook.objects.filter(pk=playbook.pk, status="pending").update(
            status="failed", error=f"{type(exc).__name__}: {exc}"
        )
        status = "failed"
    wakeups.publish(playbook_id, {"status": status}, kind="playbook")
