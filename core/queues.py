"""The one way to enqueue a task: by the task function itself, on a named queue that must
exist, once the surrounding transaction commits (so the worker finds the rows it is sent
ids of; outside a transaction that is at once).

A broker that cannot be reached (Redis restarting) does not fail the caller: the work's row
is committed, so the periodic `sandboxes.resend_lost_work` sends its task once the broker is
back. Celery itself retries the publish for about a second first."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from django.db import transaction
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

CONTROL_QUEUE = "control"
HOST_QUEUE_RE = re.compile(r"^kvm\.[a-z0-9][a-z0-9-]{0,62}$")


class _NoResult:
    """Stands in for AsyncResult, whose creation would build a (thread-local) Celery result
    backend in every request thread (about 15 ms each under daphne, which runs every request
    in a fresh thread). Answers travel through `core.wakeups`, state through the rows."""

    def __init__(self, task_id: str, **_kwargs: Any) -> None:
        self.id = task_id


def check_queue(queue: str) -> str:
    """A typo in a queue name fails here, loudly, instead of creating a queue nobody reads."""
    if queue != CONTROL_QUEUE and not HOST_QUEUE_RE.match(queue):
        raise ValueError(f"refusing to enqueue on unknown queue {queue!r}")
    return queue


def enqueue(
    task: Callable, *args: Any, queue: str, countdown: float | None = None, **options: Any
) -> None:
    """Send `task` (a Celery task function, never its name) with `args` to `queue` after commit."""
    name = task.name  # type: ignore[attr-defined]
    check_queue(queue)

    def send() -> None:
        try:
            task.app.send_task(  # type: ignore[attr-defined]
                name,
                args=list(args),
                queue=queue,
                countdown=countdown,
                ignore_result=True,
                result_cls=_NoResult,
                **options,
            )
        except (OperationalError, OSError) as exc:
            log.warning(
                "could not send %s%s to %s (%s): it will be sent again", name, args, queue, exc
            )

    transaction.on_commit(send)
