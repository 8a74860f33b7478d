"""Fleet benchmark: what the control plane pays per KVM host, with many hosts (rows only, no
VMs, no workers). For each fleet size it writes that many Host rows with a fresh heartbeat and
`--per-host` sandboxes each, then times:

  placement       services.choose_host for a create (the median of --repeat)
  beat round      one heartbeat of every host (services.record_heartbeat, what each host's
                  lifecycle pool does every VSB_HEARTBEAT_SECONDS), all of them in a row
  reconcile fan   tasks.reconcile_hosts, the beat's entry: finds the live hosts and sends one
                  reconcile per host to its queue (real messages to the broker, removed after)
  liveness scan   tasks.check_host_heartbeats

and removes what it wrote. Writes rows: run it against a scratch database (a migrated one),
e.g. with the test settings and a database of your own:
    DJANGO_SETTINGS_MODULE=config.settings.test DATABASE_URL=postgres://.../scratch \\
    TEST_REDIS_URL=redis://...:6379/<db> .venv/bin/python bench/fleet.py --hosts 10 100 300
Figures from this machine are in docs/fleet.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from sandboxes import services, tasks  # noqa: E402
from sandboxes.choices import SandboxState  # noqa: E402
from sandboxes.models import Host, Sandbox, SourceVM  # noqa: E402

PREFIX = "bench-fleet-"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def timed(fn, repeat: int = 1) -> float:
    """The median wall time of `repeat` calls of fn."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def populate(n_hosts: int, per_host: int, owner, source) -> list[Host]:
    now = timezone.now()
    hosts = Host.objects.bulk_create(
        [
            Host(
                name=f"{PREFIX}{i:04d}",
                queue_name=Host.queue_for(f"{PREFIX}{i:04d}"),
                capacity=per_host + 8,
                last_heartbeat=now,
            )
            for i in range(n_hosts)
        ]
    )
    rows = []
    for host in hosts:
        for j in range(per_host):
            sid = uuid.uuid4()
            rows.append(
                Sandbox(
                    id=sid,
                    name=f"sbx-{sid.hex[:8]}",
                    agent_id="bench",
                    owner=owner,
                    host=host,
                    source=source,
                    state=SandboxState.READY,
                    ssh_port=40000 + j,
                    workdir=f"/nonexistent/{sid.hex[:8]}",
                )
            )
    Sandbox.objects.bulk_create(rows, batch_size=2000)
    return hosts


def cleanup(broker: redis.Redis) -> None:
    Sandbox.objects.filter(host__name__startswith=PREFIX).delete()
    Host.objects.filter(name__startswith=PREFIX).delete()
    for key in broker.scan_iter(f"kvm.{PREFIX}*"):
        broker.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--per-host", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    owner, _ = User.objects.get_or_create(username="bench-fleet")
    source, _ = SourceVM.objects.get_or_create(
        name="bench-fleet-source", defaults={"disk_path": "/nonexistent/base.qcow2"}
    )
    # Only the bench's hosts: a real host of this database would take part in placement.
    others = Host.objects.exclude(name__startswith=PREFIX).filter(enabled=True).count()
    if others:
        raise SystemExit(f"{others} other enabled host(s) in this database: use a scratch one")
    cleanup(broker)
    print(
        f"{'hosts':>6} {'sandboxes':>9} {'placement':>11} {'beat round':>11} "
        f"{'per beat':>9} {'reconcile fan':>14} {'liveness':>9}"
    )
    try:
        for n_hosts in args.hosts:
            hosts = populate(n_hosts, args.per_host, owner, source)
            placement = timed(lambda: services.choose_host(source), args.repeat)
            beat = timed(lambda hosts=hosts: [services.record_heartbeat(h) for h in hosts])
            fan = timed(tasks.reconcile_hosts)
            liveness = timed(tasks.check_host_heartbeats, args.repeat)
            print(
                f"{n_hosts:>6} {n_hosts * args.per_host:>9} {ms(placement):>11} {ms(beat):>11} "
                f"{ms(beat / n_hosts):>9} {ms(fan):>14} {ms(liveness):>9}"
            )
            cleanup(broker)
    finally:
        cleanup(broker)
        connection.close()


if __name__ == "__main__":
    main()
