"""Worker side of playbook generation: runs on the sandbox's host, where its disk is."""

from __future__ import annotations

import logging
import os

from sandboxes import services as sandbox_services
from sandboxes.drivers.domain_xml import OVERLAY_NAME
from sandboxes.runtime import get_guest_reader

from . import generator, runtime, services
from .choices import ResultStatus
from .diff_compute import stored_result
from .models import Playbook
from .runner import write_project  # noqa: F401 - the runner lays projects out (and checks file names)
from .state import read_target_state, snapshot_pair

log = logging.getLogger(__name__)

FILE_LIMIT = 64 * 1024 * 1024


def generate(op_id, playbook: Playbook) -> generator.Generated:
    """Diff the two snapshots (if not yet), read the `to` state, write the playbook."""
    sandbox = playbook.sandbox
    from_snap, to_snap = snapshot_pair(playbook)
    sandbox_services.report_progress(op_id, 10, "diffing the two snapshots")
    diff = stored_result(sandbox, from_snap, to_snap)
    sandbox_services.report_progress(op_id, 50, f"reading the state at {to_snap.name}")
    overlay = os.path.join(sandbox.workdir, OVERLAY_NAME)
    reader = get_guest_reader()
    with reader.snapshot_copies(overlay, [to_snap.name], sandbox.workdir) as images:
        state = read_target_state(
            reader, images[0], diff, inline_limit=generator.INLINE_LIMIT, file_limit=FILE_LIMIT
        )
    sandbox_services.report_progress(op_id, 80, "writing the playbook and checking its syntax")
    return generator.generate(
        diff,
        state,
        title=f"Reproduce {sandbox.name} ({sandbox.agent_id}): {playbook.from_name} -> {playbook.to_name}",
        source=f"sandbox {sandbox.id} ({sandbox.source.name}), snapshots {playbook.from_name} -> {playbook.to_name}",
    )


def run_operation(op) -> None:
    """The one step of a generate_playbook operation, safe to run twice: a playbook an
    earlier attempt finished just closes the operation."""
    related = ("sandbox", "sandbox__host", "sandbox__source", "from_snapshot", "to_snapshot")
    playbook = (
        Playbook.objects.select_related(*related).filter(pk=op.input.get("playbook_id")).first()
    )
    if playbook is not None and playbook.status == ResultStatus.PENDING:
        try:
            out = generate(op.pk, playbook)
            services.store_generated(playbook, out, runtime.syntax_check(out.yaml, out.files))
        except Exception as exc:  # noqa: BLE001 - the playbook must end with the reason
            log.exception("playbook %s failed", playbook.pk)
            services.fail_playbook(playbook.pk, f"{type(exc).__name__}: {exc}")
        playbook.refresh_from_db()
    services.close_generate_operation(op, playbook)
