"""The one Celery task of the terminals app: a terminal or file operation run by the worker
of the sandbox's host (its terminals pool, `kvm.<host>.terminals`), the only process that reaches its tmux server and its
guests. The caller waits for the answer through `core.wakeups` (kind "term"); an error
travels as its `http_status` and code and is read back with `core.errors.from_http_status`."""

from __future__ import annotations

import logging

from celery import shared_task

from core import wakeups
from core.errors import Error, ServiceError, http_status
from core.queues import Work

from . import hostside

log = logging.getLogger(__name__)


@shared_task(
    name="terminals.host_op", bind=True, acks_late=False, ignore_result=True, work=Work.TERMINALS
)
def host_op(self, request_id: str, op: str, params: dict) -> None:
    """Not acks_late: typing into a terminal must never happen twice because a worker died."""
    try:
        answer = {"ok": hostside.run(op, params)}
    except ServiceError as exc:
        answer = {"error": error_answer(exc)}
    except Exception as exc:  # noqa: BLE001 - the caller must hear about it, not time out
        log.exception("terminal operation %s failed", op)
        answer = {"error": error_answer(Error(f"{type(exc).__name__}: {exc}"))}
    wakeups.publish(request_id, answer, kind="term")


def error_answer(exc: Error) -> dict:
    """What `terminals.services.call_host` reads back with `from_http_status`."""
    fields = getattr(exc, "fields", {})
    return {
        "status": http_status(exc),
        "code": exc.code,
        "message": exc.message,
        "field": next(iter(fields), ""),
    }


from . import worker  # noqa: E402,F401  - starts the terminal relay with the host's worker
