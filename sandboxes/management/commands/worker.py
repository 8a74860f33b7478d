"""Run one worker pool of this KVM host (VSB_HOST_NAME): a Celery worker consuming the pool's
queues with its own threads (core/queues.py). scripts/run.sh starts one process per pool;
`all` serves every queue in one process (a small install, the fast test rings). Options
after `--` go to `celery worker` (e.g. `-- -l DEBUG`)."""

from __future__ import annotations

import argparse

from celery import current_app
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.conf import vsb
from core.queues import Work, pool_queues

ALL = "all"


def worker_argv(pool: str, host: str, *, beat: bool = False) -> list[str]:
    """The `celery worker` arguments of `pool` ("lifecycle", "commands", "terminals" or
    "all") on `host`. Only the lifecycle pool (or `all`) may run beat: one scheduler per host."""
    works = list(Work) if pool == ALL else [Work(pool)]
    if beat and Work.LIFECYCLE not in works:
        raise CommandError("only the lifecycle pool runs the periodic sweeps (--beat)")
    queues = [q for work in works for q in pool_queues(work, host)]
    threads = sum(vsb(f"WORKER_{work.upper()}_THREADS") for work in works)
    argv = ["worker", "-Q", ",".join(queues), "-P", "threads", "-c", str(threads)]
    argv += ["--hostname", f"{pool}-{host}@%h", "-l", "INFO"]
    if beat:
        argv += ["-B", "--schedule", str(settings.DATA_DIR / "celerybeat-schedule")]
    return argv


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser) -> None:
        parser.add_argument("pool", choices=[*Work, ALL])
        parser.add_argument(
            "--beat", action="store_true", help="Also run the periodic sweeps (lifecycle only)."
        )
        parser.add_argument("celery_args", nargs=argparse.REMAINDER)

    def handle(self, *args, pool: str, beat: bool, celery_args: list[str], **options) -> None:
        extra = celery_args[1:] if celery_args[:1] == ["--"] else celery_args
        current_app.worker_main(worker_argv(pool, vsb("HOST_NAME"), beat=beat) + extra)
