"""Worker side of a dry run or an apply: ansible-runner against the inventory's hosts, every
event stored (seq) and streamed to `playbook-run.<hex>` on the channel layer, cancellable."""

from __future__ import annotations

import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import close_old_connections

from sandboxes import idle

from . import runner, runs, runtime, secrets
from .choices import RunKind, RunStatus
from .models import PlaybookRun
from .verify import target_for, version_files

log = logging.getLogger(__name__)

# How ansible-runner's ending maps to a run's status (anything else, a timeout included, failed).
RUN_STATUS = {runner.SUCCESSFUL: RunStatus.SUCCESSFUL, runner.CANCELED: RunStatus.CANCELED}
KEEP_EVENT_FIELDS = ("host", "task", "play", "task_action", "res", "duration", "changed")


def _targets(run: PlaybookRun) -> list[runner.Target]:
    targets = []
    for host in run.inventory.hosts.select_related("sandbox", "sandbox__host").order_by("name"):
        if host.sandbox_id:
            # Held while the run lasts, woken before it starts (sandboxes/idle.py).
            idle.hold(host.sandbox_id, _hold_token(run), idle.WORK_HOLD_SECONDS)
            if host.sandbox.state in idle.IDLE:
                host.sandbox = idle.ensure_awake(host.sandbox)
            target = target_for(host.sandbox, name=host.name)
        else:
            target = runner.Target(
                name=host.name,
                host=host.address,
                port=host.port,
                user=host.user,
                host_key=host.host_key,
                private_key=secrets.decrypt(host.private_key_encrypted),
                certificate=host.certificate,
            )
        target.variables = {**run.inventory.variables, **host.variables}
        targets.append(target)
    return targets


def _hold_token(run: PlaybookRun) -> str:
    return f"playbook-run-{run.pk}"


def _release_holds(run: PlaybookRun) -> None:
    for sandbox_id in run.inventory.hosts.filter(sandbox__isnull=False).values_list(
        "sandbox_id", flat=True
    ):
        idle.release(sandbox_id, _hold_token(run))


def _trim(data: dict) -> dict:
    kept = {k: data[k] for k in KEEP_EVENT_FIELDS if k in data}
    res = kept.get("res")
    if isinstance(res, dict):
        kept["res"] = {
            k: (str(v)[:2000] if isinstance(v, str) else v)
            for k, v in res.items()
            if k
            in (
                "msg",
                "changed",
                "failed",
                "rc",
                "stderr",
                "stdout",
                "diff",
                "skipped",
                "unreachable",
            )
        }
        if "diff" in kept["res"]:
            kept["res"]["diff"] = str(kept["res"]["diff"])[:4000]
    return kept


class _Stream:
    """Stores events in order and sends them to the run's group in small batches."""

    def __init__(self, run: PlaybookRun):
        self.run = run
        self.seq = 0
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()
        self.layer = get_channel_layer()

    def add(self, event: dict) -> None:
        self.seq += 1
        data = event.get("event_data", {}) or {}
        row = {
            "seq": self.seq,
            "event": event.get("event", ""),
            "host": str(data.get("host") or "")[:255],
            "task": str(data.get("task") or "")[:500],
            "data": _trim(data),
            "stdout": (event.get("stdout") or "")[:4000],
        }
        runs.record_event(
            self.run,
            row["seq"],
            row["event"],
            row["host"],
            row["task"],
            {**row["data"], "stdout": row["stdout"]},
        )
        self.pending.append(row)
        if len(self.pending) >= 20 or time.monotonic() - self.last_flush > 0.25:
            self.flush()

    def flush(self) -> None:
        if not self.pending or self.layer is None:
            self.pending = []
            return
        batch, self.pending = self.pending, []
        self.last_flush = time.monotonic()
        try:
            async_to_sync(self.layer.group_send)(
                runs.group_for(self.run.pk), {"type": "run.events", "events": batch}
            )
        except Exception:  # noqa: BLE001 - the rows are the truth; clients re-read ?after=seq
            log.warning("could not stream events of run %s", self.run.pk, exc_info=True)


def _cancel_checker(run_id):
    state = {"at": 0.0, "value": False}

    def cancelled() -> bool:
        now = time.monotonic()
        if now - state["at"] >= 1.0:
            state["at"] = now
            state["value"] = PlaybookRun.objects.filter(pk=run_id, cancel_requested=True).exists()
        return state["value"]

    return cancelled


def execute(run_id) -> None:
    run = runs.claim_run(run_id)
    if run is None:
        return
    stream = _Stream(run)
    status, error, stats, failed = RunStatus.ERROR, "", {}, []
    try:
        result = runner.run(
            run.version.yaml,
            version_files(run.version),
            _targets(run),
            isolation=runtime.ansible_isolation(),
            check=run.kind == RunKind.CHECK,
            on_event=stream.add,
            cancelled=_cancel_checker(run.pk),
        )
        stream.flush()
        stats = {h: vars(s) for h, s in result.hosts.items()}
        failed = result.failed_tasks
        status = RUN_STATUS.get(result.status, RunStatus.FAILED)
        if status == RunStatus.FAILED and failed:
            first = failed[0]
            error = f"task {first['task']!r} failed on {first['host']}: {first['message'][:500]}"
        elif status == RunStatus.FAILED:
            error = f"ansible-runner ended {result.status} (rc {result.rc})" + (
                f": {result.error}" if result.error else ""
            )
    except Exception as exc:  # noqa: BLE001 - the run must end with the reason
        log.exception("playbook run %s", run_id)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        try:
            _release_holds(run)
        except Exception:  # noqa: BLE001 - the holds expire by themselves
            log.warning("could not release the idle holds of run %s", run_id, exc_info=True)
    runs.finish_run(
        run, status, error=error, host_stats=stats, failed_tasks=failed, events=stream.seq
    )
    close_old_connections()
