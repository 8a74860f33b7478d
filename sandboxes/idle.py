"""Idle sandboxes cost nothing: the services that pause, hibernate and wake them.

* **Use** is recorded cheaply: `touch` writes `Sandbox.last_used_at` at most once per
  TOUCH_SECONDS per sandbox and process (commands, terminal and file operations call it), and
  `hold`/`release` mark work in progress that has no row (a terminal viewer connected to the
  web server, a file operation on the worker) in a Redis sorted set per sandbox, each member
  with the epoch second it expires at (a viewer renews its hold; a crashed process's hold
  expires by itself).
* **The sweep** (`sweep_host`, one pass per beat on each host's own lifecycle queue) pauses a
  ready sandbox unused for VSB_IDLE_PAUSE_SECONDS (vCPUs stopped: memory kept, no CPU used) and
  hibernates one unused for VSB_IDLE_HIBERNATE_SECONDS (libvirt's managed save: memory written
  to disk, QEMU gone), when nothing runs in it: no running command, no open operation, no
  hold. A sandbox with an open terminal session is paused but never hibernated: its tmux
  panes' ssh connections would not survive the restore (docs/terminals.md).
* **Waking** (`ensure_awake`, called by every worker path that needs the guest: commands,
  terminal and file operations, snapshots, diffs, playbook runs) resumes a paused domain (a
  libvirt call of milliseconds) or restores a hibernated one (seconds), then marks it ready.
  The API accepts the idle states wherever it accepts `ready`, so the caller sees only latency.

Pause and wake exclude each other through the sandbox's row lock (SELECT ... FOR NO KEY UPDATE,
which does not block the insert of a command row referencing the sandbox): the sweep checks
its conditions and acts under the lock, and a waker always takes it, so a command either is
seen by the sweep (no pause) or finds the sandbox paused and wakes it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from audit import services as audit
from core import queues, wakeups
from core.conf import vsb
from core.errors import (
    Conflict,
    OperationFailed,
    OperationTimeout,
    ServiceError,
    from_http_status,
    http_status,
)

from . import lifecycle, tasks
from .choices import IDLE_STATES, WAKEABLE_STATES, CommandStatus, OperationStatus, SandboxState
from .models import Command, Host, Operation, Sandbox
from .remote.ca import CLOCK_SKEW_SECONDS
from .runtime import deployment_name

log = logging.getLogger(__name__)

S = SandboxState
WAKEABLE = WAKEABLE_STATES
IDLE = IDLE_STATES
TOUCH_SECONDS = 5.0
# A guest paused for longer than this gets its clock set on resume (its clock stood still).
CLOCK_SYNC_AFTER_SECONDS = 30.0
VIEWER_HOLD_SECONDS = 120  # a viewer renews its hold every VIEWER_HOLD_SECONDS / 2
WORK_HOLD_SECONDS = 3600  # released when the work ends; expires if its process died

_touched: dict[str, float] = {}
_touched_lock = threading.Lock()


# --- use ---------------------------------------------------------------------------------


def touch(sandbox_id) -> None:
    """The sandbox was used now (at most one write per TOUCH_SECONDS per process)."""
    key = str(sandbox_id)
    now = time.monotonic()
    with _touched_lock:
        if now - _touched.get(key, -TOUCH_SECONDS) < TOUCH_SECONDS:
            return
        _touched[key] = now
        if len(_touched) > 10_000:
            _touched.clear()
    Sandbox.objects.filter(pk=sandbox_id).update(last_used_at=timezone.now())


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


def _holds_key(sandbox_id) -> str:
    return f"vsb:{deployment_name()}:idle-holds:{uuid.UUID(str(sandbox_id)).hex}"


def hold(sandbox_id, token: str, seconds: float) -> None:
    """Keep the sandbox from being paused for `seconds` (renew to keep it longer): a terminal
    viewer, a file operation in progress."""
    key = _holds_key(sandbox_id)
    pipe = _redis().pipeline()
    pipe.zadd(key, {token: time.time() + seconds})
    pipe.expire(key, int(seconds) + 60)
    pipe.execute()


def release(sandbox_id, token: str) -> None:
    _redis().zrem(_holds_key(sandbox_id), token)


def held(sandbox_ids: Iterable) -> set[str]:
    """Which of these sandboxes someone holds now (as str ids)."""
    ids = [str(i) for i in sandbox_ids]
    if not ids:
        return set()
    now = time.time()
    pipe = _redis().pipeline()
    for sandbox_id in ids:
        pipe.zcount(_holds_key(sandbox_id), now, "+inf")
    return {sandbox_id for sandbox_id, n in zip(ids, pipe.execute(), strict=True) if n}


# Apps above sandboxes say which sandboxes must not be hibernated (terminals: an open tmux
# session, whose panes' ssh would not survive) or paused at all (playbooks: a run in
# progress): functions of a list of sandbox ids returning the set of those (as str).
_no_hibernate: list[Callable[[list[str]], set[str]]] = []
_no_pause: list[Callable[[list[str]], set[str]]] = []


def register_blocker(check: Callable[[list[str]], set[str]], *, pause: bool) -> None:
    """`check(ids)` names the sandboxes that must not be hibernated (or, with `pause`, not
    even paused) now."""
    (_no_pause if pause else _no_hibernate).append(check)


def _blocked(checks, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for check in checks:
        found |= {str(i) for i in check(ids)}
    return found


# --- the decision --------------------------------------------------------------------------

PAUSE = "pause"
HIBERNATE = "hibernate"


def decide(
    state: str,
    idle_seconds: float,
    *,
    pause_after: int,
    hibernate_after: int,
    may_pause: bool = True,
    may_hibernate: bool = True,
) -> str | None:
    """What the sweep does to a settled sandbox unused for `idle_seconds`: PAUSE, HIBERNATE or
    nothing. `*_after` 0: never. A ready sandbox past both times goes straight to hibernation."""
    if not may_pause:
        return None
    if (
        state in (S.READY, S.PAUSED)
        and hibernate_after
        and may_hibernate
        and idle_seconds >= hibernate_after
    ):
        return HIBERNATE
    if state == S.READY and pause_after and idle_seconds >= pause_after:
        return PAUSE
    return None


def _idle_since(sandbox: Sandbox) -> datetime:
    """Its last use, or when it last became ready (booted, started, restored), whichever is
    later; not when it was paused: it hibernates HIBERNATE_SECONDS after its last use."""
    used = [t for t in (sandbox.last_used_at, sandbox.ready_at) if t]
    return max(used) if used else sandbox.state_changed_at


def _running_commands(sandbox_ref):
    return Command.objects.filter(sandbox=sandbox_ref, status=CommandStatus.RUNNING)


def _open_operations(sandbox_ref):
    return Operation.objects.filter(
        sandbox=sandbox_ref, status__in=[OperationStatus.PENDING, OperationStatus.RUNNING]
    )


def _candidates(host: Host):
    return (
        Sandbox.objects.filter(host=host, state__in=[S.READY, S.PAUSED])
        .exclude(Exists(_running_commands(OuterRef("pk"))))
        .exclude(Exists(_open_operations(OuterRef("pk"))))
        .select_related("host")
    )


@dataclass
class SweepReport:
    host: str
    paused: list[str] = field(default_factory=list)
    hibernated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def sweep_host(host: Host, *, now: datetime | None = None) -> SweepReport:
    """One idle sweep over `host` (on its own worker: it needs the host's libvirt)."""
    now = now or timezone.now()
    pause_after, hibernate_after = vsb("IDLE_PAUSE_SECONDS"), vsb("IDLE_HIBERNATE_SECONDS")
    report = SweepReport(host=host.name)
    if not (pause_after or hibernate_after):
        return report
    sandboxes = list(_candidates(host))
    ids = [str(s.pk) for s in sandboxes]
    busy = held(ids) | _blocked(_no_pause, ids)
    no_hibernate = _blocked(_no_hibernate, ids)
    for sandbox in sandboxes:
        action = decide(
            sandbox.state,
            (now - _idle_since(sandbox)).total_seconds(),
            pause_after=pause_after,
            hibernate_after=hibernate_after,
            may_pause=str(sandbox.pk) not in busy,
            may_hibernate=str(sandbox.pk) not in no_hibernate,
        )
        if action is None:
            continue
        try:
            if _act(sandbox, action, now, pause_after, hibernate_after):
                (report.paused if action == PAUSE else report.hibernated).append(sandbox.name)
        except Exception as exc:  # noqa: BLE001 - one sandbox's trouble must not stop the pass
            log.warning("idle %s of %s failed: %s", action, sandbox.name, exc)
            report.errors.append(f"{sandbox.name}: {exc}")
    if report.paused or report.hibernated or report.errors:
        log.info("idle sweep of host %s: %s", host.name, report.as_dict())
    return report


def _locked(sandbox_id) -> Sandbox:
    return (
        Sandbox.objects.select_for_update(no_key=True, of=("self",))
        .select_related("host", "source")
        .get(pk=sandbox_id)
    )


def _act(sandbox: Sandbox, action: str, now, pause_after: int, hibernate_after: int) -> bool:
    """Pause or hibernate under the row lock, once the conditions still hold there."""
    from .provisioning import driver_for, get_ssh_pool

    with transaction.atomic():
        row = _locked(sandbox.pk)
        threshold = hibernate_after if action == HIBERNATE else pause_after
        if (
            row.state != sandbox.state
            or (now - _idle_since(row)).total_seconds() < threshold
            or _running_commands(row.pk).exists()
            or _open_operations(row.pk).exists()
        ):
            return False
        driver = driver_for(row)
        if action == PAUSE:
            driver.suspend(row.name)
            lifecycle.transition(row.pk, S.PAUSED, expected=[row.state])
        else:
            get_ssh_pool().discard(str(row.pk))
            driver.managed_save(row.name)
            lifecycle.transition(row.pk, S.HIBERNATED, expected=[row.state])
    return True


# --- waking --------------------------------------------------------------------------------


def ensure_awake(sandbox: Sandbox) -> Sandbox:
    """On the sandbox's host (a worker): the sandbox ready, its guest running, woken first if
    it was paused or hibernated; marks it used. Conflict when it is in no state to wake
    (stopped, destroyed...). Returns the sandbox as it is now."""
    from .provisioning import check_port_before_start, driver_for, get_ssh_pool

    if sandbox.state not in WAKEABLE:
        raise Conflict(f"Sandbox {sandbox.name} is {sandbox.state}.", code="invalid_state")
    from .services import check_room

    clock_behind = restored = far_behind = False
    with transaction.atomic():
        room_checked = sandbox.state == S.HIBERNATED
        if room_checked:
            # It holds memory again once restored: room on its host first (Unavailable,
            # code capacity, with the numbers). The host row before the sandbox's, the order
            # admission and placement lock them in.
            check_room(sandbox)
        row = _locked(sandbox.pk)
        if row.state not in WAKEABLE:
            raise Conflict(f"Sandbox {row.name} is {row.state}.", code="invalid_state")
        if row.state == S.HIBERNATED and not room_checked:
            check_room(row)  # hibernated by a sweep since it was read
        if row.state in IDLE:
            driver = driver_for(row)
            idle_for = (timezone.now() - row.state_changed_at).total_seconds()
            fields = {}
            if row.state == S.PAUSED:
                driver.resume(row.name)
                clock_behind = idle_for > CLOCK_SYNC_AFTER_SECONDS
                # Behind by more than certificates are back-dated: new logins need it set.
                far_behind = idle_for > CLOCK_SKEW_SECONDS - 600
            else:
                # Restored from the managed save image: a new QEMU, every TCP connection to
                # the old one is gone. A new ready_at makes every process's pool reconnect.
                get_ssh_pool().discard(str(row.pk))
                check_port_before_start(row)  # free while its QEMU was gone
                driver.start(row.name)
                fields["ready_at"] = timezone.now()
                clock_behind = restored = True
            lifecycle.transition(row.pk, S.READY, expected=[row.state], **fields)
            log.info(
                "woke %s from %s after %.0f s",
                row.name,
                row.state,
                idle_for,
                extra={"sandbox_id": str(row.pk), "host": row.host.name},
            )
            row.refresh_from_db()
    if clock_behind:
        _set_clock(row, wait=restored or far_behind)
    touch(row.pk)
    return row


def _set_clock(sandbox: Sandbox, *, wait: bool) -> None:
    """The guest's clock stood still while it was paused or saved (TCG has no kvmclock, and
    KVM guests lag too): set it through the guest agent. That takes ~1 s under TCG (the agent
    also writes the RTC), most of a paused sandbox's first command (bench/idle.py: 1.8 s
    against 0.12 s), so after a resume it follows a second later, beside the command: SSH
    certificates are back-dated a day (remote/ca.py), so a new login works meanwhile. After a
    restore from hibernation, or a pause longer than that (`wait`), the wake waits for it,
    CLOCK_SET_WAIT_SECONDS at most, since the agent is the guest's (the bench saw one hold a
    set 121 s before it "disappeared")."""
    from .provisioning import driver_for

    # Not waited for: a moment later, as the guest has one vCPU and the command it was woken
    # for goes first.
    after = 0.0 if wait else CLOCK_SET_DELAY_SECONDS
    setting = _clock_setters.submit(_set_clock_after, driver_for(sandbox), sandbox.name, after)
    setting.add_done_callback(lambda done: _clock_set(sandbox.name, done))
    if not wait:
        return
    with contextlib.suppress(Exception):  # a timeout, or the failure _clock_set logs
        setting.result(timeout=CLOCK_SET_WAIT_SECONDS)
    if not setting.done():
        log.warning(
            "the clock of %s is not set %.0f s after waking it (its guest agent is slow); going on",
            sandbox.name,
            CLOCK_SET_WAIT_SECONDS,
        )


def _set_clock_after(driver, name: str, seconds: float) -> None:
    time.sleep(seconds)
    driver.set_guest_time(name)


def _clock_set(name: str, setting: concurrent.futures.Future) -> None:
    if (exc := setting.exception()) is not None:  # a late clock only matters to new logins
        log.warning("could not set the clock of %s after waking it: %s", name, exc)


CLOCK_SET_WAIT_SECONDS = 5.0
CLOCK_SET_DELAY_SECONDS = 1.0
_clock_setters = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="clock")


def pause_now(sandbox: Sandbox, *, hibernate: bool = False) -> Sandbox:
    """On the sandbox's host: pause (or hibernate) a ready sandbox at once (an explicit POST
    /pause). A hibernated one stays as it is, a paused one too unless `hibernate`."""
    from .provisioning import driver_for, get_ssh_pool

    with transaction.atomic():
        row = _locked(sandbox.pk)
        if row.state == S.HIBERNATED or (row.state == S.PAUSED and not hibernate):
            return row
        if row.state not in (S.READY, S.PAUSED):
            raise Conflict(
                f"Sandbox {row.name} is {row.state}; only a ready sandbox can be paused.",
                code="invalid_state",
            )
        if _running_commands(row.pk).exists():
            raise Conflict(
                f"Sandbox {row.name} is running a command; pause it once that has finished.",
                code="busy",
            )
        if hibernate:
            get_ssh_pool().discard(str(row.pk))
            driver_for(row).managed_save(row.name)
            lifecycle.transition(row.pk, S.HIBERNATED, expected=[row.state])
        else:
            driver_for(row).suspend(row.name)
            lifecycle.transition(row.pk, S.PAUSED, expected=[S.READY])
        row.refresh_from_db()
    return row


# --- the API's pause and resume ------------------------------------------------------------

POWER_TIMEOUT_SECONDS = 120.0


def pause_sandbox(sandbox: Sandbox, user, *, hibernate: bool = False) -> Sandbox:
    """Pause the sandbox now (vCPUs stopped, memory kept), or with `hibernate` save its
    memory to disk; any later use wakes it."""
    return _power(sandbox, user, "hibernate" if hibernate else "pause")


def resume_sandbox(sandbox: Sandbox, user) -> Sandbox:
    """Resume (or restore from hibernation) the sandbox now; a ready one stays as it is."""
    return _power(sandbox, user, "resume")


def _power(sandbox: Sandbox, user, action: str) -> Sandbox:
    if action != "resume" and sandbox.state not in WAKEABLE:
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; only a ready sandbox can be paused.",
            code="invalid_state",
        )
    if action == "resume" and sandbox.state not in WAKEABLE:
        raise Conflict(
            f"Sandbox {sandbox.name} is {sandbox.state}; only a paused or hibernated sandbox "
            "can be resumed.",
            code="invalid_state",
        )
    audit.record(f"sandbox.{action}", user=user, target=sandbox, data={"from": sandbox.state})
    request_id = uuid.uuid4().hex
    # The commands pool: many threads, never busy for long with a lifecycle step.
    queues.enqueue(tasks.set_power, request_id, str(sandbox.pk), action, host=sandbox.host.name)
    answer = wakeups.wait(request_id, POWER_TIMEOUT_SECONDS, kind="power")
    if answer is None:
        raise OperationTimeout(
            f"The worker of host {sandbox.host.name} did not {action} the sandbox in time.",
            code="worker_timeout",
        )
    if "status" in answer:
        raise from_http_status(answer["status"], answer["error"], code=answer["code"])
    if "error" in answer:
        raise OperationFailed(
            f"{action} failed: {answer['error']}", code=answer["code"] or "failed"
        )
    return Sandbox.objects.select_related("host", "source").get(pk=sandbox.pk)


def run_power(request_id: str, sandbox_id: str, action: str) -> None:
    """The worker's half of pause_sandbox/resume_sandbox: act, then wake the waiting request."""
    sandbox = Sandbox.objects.select_related("host", "source").filter(pk=sandbox_id).first()
    try:
        if sandbox is None:
            raise Conflict("The sandbox is gone.", code="invalid_state")
        if action in ("pause", "hibernate"):
            pause_now(sandbox, hibernate=action == "hibernate")
        else:
            ensure_awake(sandbox)
        answer: dict = {"ok": True}
    except ServiceError as exc:  # refused (409, a 503 capacity): read back as it was raised
        answer = {"error": exc.message, "code": exc.code, "status": http_status(exc)}
    except Exception as exc:  # noqa: BLE001 - the caller must hear why, not time out
        log.exception("%s of sandbox %s failed", action, sandbox_id)
        answer = {"error": f"{exc}", "code": getattr(exc, "code", "failed")}
    wakeups.publish(request_id, answer, kind="power")
