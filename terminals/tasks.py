"""The one Celery task of the terminals app: a terminal or file operation run by the worker
of the sandbox's host (`kvm.<host>`), the only process that reaches its tmux server and its
guests. The caller waits for the answer through `sandboxes.wakeups` (kind "term")."""

from __future__ import annotations

import logging

from celery import shared_task

from core import wakeups

from . import hostside

log = logging.getLogger(__name__)


@shared_task(name="terminals.host_op", bind=True, acks_late=False, ignore_result=True)
def host_op(self, request_id: str, op: str, params: dict) -> None:
    """Not acks_late: typing into a terminal must never happen twice because a worker died."""
    try:
        answer = {"ok": hostside.run(op, params)}
    except hostside.HostOpError as exc:
        answer = {"error": exc.as_dict()}
    except Exception as exc:  # noqa: BLE001 - the caller must hear about it, not time out
        log.exception("terminal operation %s failed", op)
        answer = {
            "error": {"status": 500, "code": "error", "message": f"{type(exc).__name__}: {exc}"}
        }
    wakeups.publish(request_id, answer, kind="term")


from . import worker  # noqa: E402,F401  - starts the terminal relay with the host's worker
