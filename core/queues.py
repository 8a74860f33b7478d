"""The one way to enqueue a task, and the one routing of work to queues.

Each KVM host runs three worker pools (separate processes, `manage.py worker <pool>`), so a
slow kind of work can never starve another: a host with every commands thread held by an
hour-long command still creates, snapshots and destroys sandboxes.

| work        | queue of host h      | without a host     | pool (process)                  |
|-------------|----------------------|--------------------|---------------------------------|
| lifecycle   | `kvm.h`              | `control`          | lifecycle: beat, heartbeat      |
| commands    | `kvm.h.commands`     | `control.commands` | commands: long, I/O bound       |
| terminals   | `kvm.h.terminals`    | -                  | terminals: short, interactive   |

A task says which work it is (`@shared_task(..., work=Work.COMMANDS)`; lifecycle when it says
nothing); `enqueue` sends it to `queue_for(work_of(task), host)` once the surrounding
transaction commits (so the worker finds the rows it is sent ids of; outside a transaction
that is at once). `check_queue` accepts exactly the names `queue_for` makes.

A broker that cannot be reached (Redis restarting) does not fail the caller: the work's row
is committed, so the periodic `sandboxes.resend_lost_work` sends its task once the broker is
back. Celery itself retries the publish for about a second first."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from django.db import transaction
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

CONTROL_QUEUE = "control"
HOST_NAME_RE = r"[a-z0-9][a-z0-9-]{0,62}"


class Work(StrEnum):
    """A kind of work, served by a pool of its own on each host."""

    # Sandbox operations (create, start, stop, destroy, snapshots, readiness polls) and,
    # without a host, the control-plane sweeps and webhooks: short steps, never a wait.
    LIFECYCLE = "lifecycle"
    # Commands, playbook runs, diffs, playbook generation and verification: each may hold
    # its thread for minutes to an hour, waiting on a guest, a disk read or Ansible.
    COMMANDS = "commands"
    # Terminal and file operations (tmux, SFTP): short and interactive.
    TERMINALS = "terminals"


_SUFFIX = {Work.LIFECYCLE: "", Work.COMMANDS: ".commands", Work.TERMINALS: ".terminals"}
_QUEUE_RE = re.compile(
    rf"^(?:control(?:\.commands)?|kvm\.{HOST_NAME_RE}(?:\.commands|\.terminals)?)$"
)


def queue_for(work: Work | str, host: str | None = None) -> str:
    """The queue of `work` on the KVM host named `host` (None: work that needs no host)."""
    work = Work(work)
    if host is None:
        if work == Work.TERMINALS:
            raise ValueError("terminal work runs on a KVM host: name one")
        return CONTROL_QUEUE + _SUFFIX[work]
    return check_queue(f"kvm.{host}{_SUFFIX[work]}")


def work_of(task: Callable) -> Work:
    """The work a task function declared (`work=` on its decorator); lifecycle by default."""
    return Work(getattr(task, "work", Work.LIFECYCLE))


def pool_queues(work: Work | str, host: str) -> list[str]:
    """What the pool of `work` on `host` consumes: its host queue and, where the work has
    one, the host-less queue of the same work (every host's pool helps with that)."""
    work = Work(work)
    queues = [queue_for(work, host)]
    if work != Work.TERMINALS:
        queues.append(queue_for(work))
    return queues


def served_work(worker, host: str) -> set[Work]:
    """The kinds of work of `host` a starting Celery worker (the `worker_ready` sender)
    consumes: what it must look after (recover, heartbeat, relay). Empty for a worker of
    another host's or of the control queues only."""
    try:
        consumed = {q.name for q in worker.app.amqp.queues.consume_from.values()}
    except Exception:  # noqa: BLE001 - not a consuming worker
        return set()
    return {work for work in Work if queue_for(work, host) in consumed}


def check_queue(queue: str) -> str:
    """A typo in a queue name fails here, loudly, instead of creating a queue nobody reads."""
    if not _QUEUE_RE.match(queue):
        raise ValueError(f"refusing to enqueue on unknown queue {queue!r}")
    return queue


class _NoResult:
    """Stands in for AsyncResult, whose creation would build a (thread-local) Celery result
    backend in every request thread (about 15 ms each under daphne, which runs every request
    in a fresh thread). Answers travel through `core.wakeups`, state through the rows."""

    def __init__(self, task_id: str, **_kwargs: Any) -> None:
        self.id = task_id


def enqueue(
    task: Callable,
    *args: Any,
    host: str | None = None,
    countdown: float | None = None,
    **options: Any,
) -> str:
    """Send `task` (a Celery task function, never its name) with `args` after commit, to the
    queue of its work on the KVM host named `host` (None: the host-less queue). Returns the
    queue."""
    if "queue" in options:
        raise TypeError("enqueue routes by the task's work and host; it takes no queue")
    name = task.name  # type: ignore[attr-defined]
    queue = queue_for(work_of(task), host)

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
    return queue
