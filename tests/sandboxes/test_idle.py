"""Idle sandboxes against the fake driver: the sweep's decisions (pause after the idle time,
hibernate after the longer one, never while anything uses the sandbox), the transparent wake
of every path that needs the guest, and the lifecycle verbs and the reconcile from the idle
states. (tests/e2e/test_idle.py does it with a real VM and a real worker.)"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from core import wakeups
from core.errors import Conflict, Unavailable
from sandboxes import idle, provisioning, reconcile, services, tasks
from sandboxes.choices import CommandStatus, OperationStatus, SandboxState
from sandboxes.drivers.base import PAUSED, RUNNING, SHUTOFF
from sandboxes.models import Command, Sandbox
from sandboxes.remote import ssh
from sandboxes.remote.ssh import CommandResult
from terminals.models import TerminalSession

pytestmark = pytest.mark.django_db

S = SandboxState
PAUSE_AFTER, HIBERNATE_AFTER = 300, 3600


@pytest.fixture(autouse=True)
def idle_times(settings, tmp_path):
    settings.VSB = {
        **settings.VSB,
        "IDLE_PAUSE_SECONDS": PAUSE_AFTER,
        "IDLE_HIBERNATE_SECONDS": HIBERNATE_AFTER,
        "SANDBOX_DIR": str(tmp_path),
    }


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("iris")


@pytest.fixture
def make_sandbox(host, source, owner, driver, tmp_path):
    """A sandbox in `state`, last used `idle_for` seconds ago, its domain in `domain`."""

    def make(state: str = S.READY, idle_for: float = 0, domain: str = RUNNING) -> Sandbox:
        sid = uuid.uuid4()
        used = timezone.now() - timedelta(seconds=idle_for)
        sandbox = Sandbox.objects.create(
            id=sid,
            name=f"sbx-{sid.hex[:8]}",
            owner=owner,
            host=host,
            source=source,
            agent_id="iris",
            state=state,
            state_changed_at=used,
            ready_at=used,
            last_used_at=used,
            workdir=str(tmp_path / f"sbx-{sid.hex[:8]}"),
        )
        driver.add_domain(sandbox.name, state=domain, tags=provisioning.domain_tags(sandbox))
        return sandbox

    return make


def state_of(sandbox: Sandbox) -> str:
    sandbox.refresh_from_db()
    return sandbox.state


# --- the decision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "idle_for", "pause_after", "hibernate_after", "blocks", "expected"),
    [
        (S.READY, 10, 300, 3600, {}, None),
        (S.READY, 300, 300, 3600, {}, idle.PAUSE),
        (S.READY, 4000, 300, 3600, {}, idle.HIBERNATE),
        (S.PAUSED, 1000, 300, 3600, {}, None),
        (S.PAUSED, 3600, 300, 3600, {}, idle.HIBERNATE),
        (S.READY, 10**6, 0, 0, {}, None),
        (S.READY, 10**6, 300, 0, {}, idle.PAUSE),
        (S.READY, 10**6, 0, 3600, {}, idle.HIBERNATE),
        (S.READY, 10**6, 300, 3600, {"may_pause": False}, None),
        (S.READY, 10**6, 300, 3600, {"may_hibernate": False}, idle.PAUSE),
        (S.PAUSED, 10**6, 300, 3600, {"may_hibernate": False}, None),
        (S.HIBERNATED, 10**6, 300, 3600, {}, None),
    ],
)
def test_it_decides_by_the_idle_times(
    state, idle_for, pause_after, hibernate_after, blocks, expected
):
    assert (
        idle.decide(
            state, idle_for, pause_after=pause_after, hibernate_after=hibernate_after, **blocks
        )
        == expected
    )


# --- the sweep -----------------------------------------------------------------------------


def test_it_pauses_a_sandbox_unused_for_the_idle_time_and_leaves_a_used_one(
    host, driver, make_sandbox
):
    unused = make_sandbox(idle_for=PAUSE_AFTER + 5)
    used = make_sandbox(idle_for=PAUSE_AFTER - 30)

    report = idle.sweep_host(host)

    assert report.paused == [unused.name] and report.hibernated == []
    assert state_of(unused) == S.PAUSED and driver.state(unused.name) == PAUSED
    assert state_of(used) == S.READY and driver.state(used.name) == RUNNING
    event = AuditEvent.objects.get(verb="sandbox.transition", sandbox_id=unused.pk)
    assert event.data == {"to": "paused"}


def test_it_hibernates_a_sandbox_unused_for_the_longer_time(host, driver, make_sandbox):
    paused = make_sandbox(S.PAUSED, idle_for=HIBERNATE_AFTER + 1, domain=PAUSED)
    ready = make_sandbox(idle_for=HIBERNATE_AFTER + 1)

    report = idle.sweep_host(host)

    assert sorted(report.hibernated) == sorted([paused.name, ready.name])
    for sandbox in (paused, ready):
        assert state_of(sandbox) == S.HIBERNATED
        info = driver.get_domain(sandbox.name)
        assert info.state == SHUTOFF and info.managed_save


def test_it_leaves_a_sandbox_running_a_command_even_when_its_last_use_is_old(
    host, driver, make_sandbox
):
    sandbox = make_sandbox(idle_for=HIBERNATE_AFTER * 2)
    Command.objects.create(sandbox=sandbox, command="sleep 9999", timeout_seconds=3600)
    assert idle.sweep_host(host).paused == []
    assert state_of(sandbox) == S.READY and driver.state(sandbox.name) == RUNNING


def test_it_leaves_a_sandbox_an_operation_is_working_on(host, driver, make_sandbox):
    sandbox = make_sandbox(idle_for=PAUSE_AFTER * 2)
    services.new_operation("snapshot", sandbox, None, deadline_seconds=60)
    assert idle.sweep_host(host).paused == []
    assert state_of(sandbox) == S.READY


def test_it_leaves_a_sandbox_a_viewer_or_a_file_operation_holds_until_it_lets_go(
    host, driver, make_sandbox
):
    sandbox = make_sandbox(idle_for=PAUSE_AFTER * 2)
    idle.hold(sandbox.pk, "viewer-1", idle.VIEWER_HOLD_SECONDS)
    try:
        assert idle.sweep_host(host).paused == []
        assert state_of(sandbox) == S.READY
    finally:
        idle.release(sandbox.pk, "viewer-1")
    assert idle.sweep_host(host).paused == [sandbox.name]


def test_an_expired_hold_no_longer_counts(host, driver, make_sandbox):
    sandbox = make_sandbox(idle_for=PAUSE_AFTER * 2)
    idle.hold(sandbox.pk, "a-crashed-viewer", -1)
    assert idle.sweep_host(host).paused == [sandbox.name]


def test_a_sandbox_with_an_open_terminal_session_is_paused_but_never_hibernated(
    host, driver, make_sandbox, owner
):
    sandbox = make_sandbox(idle_for=HIBERNATE_AFTER * 2)
    TerminalSession.objects.create(
        sandbox=sandbox, name="main", tmux_name=f"vsb-{sandbox.id.hex}-main", created_by=owner
    )
    report = idle.sweep_host(host)
    assert report.paused == [sandbox.name] and report.hibernated == []
    assert idle.sweep_host(host).hibernated == []
    assert state_of(sandbox) == S.PAUSED


def test_zero_idle_times_mean_never(host, driver, make_sandbox, settings):
    settings.VSB = {**settings.VSB, "IDLE_PAUSE_SECONDS": 0, "IDLE_HIBERNATE_SECONDS": 0}
    sandbox = make_sandbox(idle_for=10**6)
    assert idle.sweep_host(host).as_dict() == {
        "host": host.name,
        "paused": [],
        "hibernated": [],
        "errors": [],
    }
    assert state_of(sandbox) == S.READY


def test_the_beat_entry_sends_one_sweep_per_live_host_to_its_own_queue(
    host, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.sweep_idle_hosts.run() == [host.name]
    assert sent_tasks == [("sandboxes.sweep_idle_host", [host.pk], host.queue_name)]


# --- use -----------------------------------------------------------------------------------


def test_touch_writes_the_last_use_at_most_once_per_few_seconds(make_sandbox):
    sandbox = make_sandbox(idle_for=1000)
    idle.touch(sandbox.pk)
    sandbox.refresh_from_db()
    first = sandbox.last_used_at
    assert (timezone.now() - first).total_seconds() < 5
    idle.touch(sandbox.pk)
    sandbox.refresh_from_db()
    assert sandbox.last_used_at == first


# --- waking --------------------------------------------------------------------------------


@pytest.fixture
def fake_ssh(monkeypatch):
    ran: list[str] = []

    def run(client, command, **kwargs):
        ran.append(command)
        return CommandResult(0, b"hi\n", b"", False, False, False, 3)

    monkeypatch.setattr(provisioning, "pooled_client", lambda sandbox: object())
    monkeypatch.setattr(ssh, "run", run)
    return ran


def test_a_command_on_a_paused_sandbox_resumes_it_first_and_runs(driver, make_sandbox, fake_ssh):
    sandbox = make_sandbox(S.PAUSED, idle_for=PAUSE_AFTER + 1, domain=PAUSED)
    cmd = Command.objects.create(sandbox=sandbox, command="echo hi", timeout_seconds=30)

    fields = tasks.run_command.run(str(cmd.pk))

    assert fields["status"] == CommandStatus.FINISHED and fields["stdout"] == "hi\n"
    assert fake_ssh == ["echo hi"]
    assert state_of(sandbox) == S.READY and driver.state(sandbox.name) == RUNNING
    # Paused longer than CLOCK_SYNC_AFTER_SECONDS: its clock is set, beside the command.
    assert eventually(lambda: driver.domains[sandbox.name].time_set == 1)
    sandbox.refresh_from_db()
    assert (timezone.now() - sandbox.last_used_at).total_seconds() < 5


@pytest.mark.parametrize(
    ("state", "domain", "waits"), [(S.PAUSED, PAUSED, False), (S.HIBERNATED, RUNNING, True)]
)
def test_a_guest_agent_that_does_not_answer_delays_the_wake_by_seconds_at_most(
    driver, make_sandbox, fake_ssh, monkeypatch, caplog, state, domain, waits
):
    """After a resume the clock is set beside the command (its SSH connection is still open);
    after a restore the command waits for it, a few seconds at most."""
    sandbox = make_sandbox(state, idle_for=HIBERNATE_AFTER + 1, domain=domain)
    if state == S.HIBERNATED:
        driver.managed_save(sandbox.name)
    answered = threading.Event()
    monkeypatch.setattr(driver, "set_guest_time", lambda name: answered.wait(30))
    monkeypatch.setattr(idle, "CLOCK_SET_WAIT_SECONDS", 0.5)
    cmd = Command.objects.create(sandbox=sandbox, command="echo hi", timeout_seconds=30)
    started = time.monotonic()
    try:
        fields = tasks.run_command.run(str(cmd.pk))
        took = time.monotonic() - started
    finally:
        answered.set()

    assert fields["status"] == CommandStatus.FINISHED and fake_ssh == ["echo hi"]
    if waits:
        assert 0.5 <= took < 5 and "is not set" in caplog.text
    else:
        assert took < 0.5 and "is not set" not in caplog.text


def eventually(check, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_command_on_a_hibernated_sandbox_restores_it_and_reconnects(
    driver, make_sandbox, fake_ssh
):
    sandbox = make_sandbox(S.HIBERNATED, idle_for=HIBERNATE_AFTER + 1, domain=RUNNING)
    driver.managed_save(sandbox.name)
    before = sandbox.ready_at
    cmd = Command.objects.create(sandbox=sandbox, command="echo hi", timeout_seconds=30)

    fields = tasks.run_command.run(str(cmd.pk))

    assert fields["status"] == CommandStatus.FINISHED
    info = driver.get_domain(sandbox.name)
    assert info.state == RUNNING and not info.managed_save
    sandbox.refresh_from_db()
    assert sandbox.state == S.READY
    assert sandbox.ready_at > before, "a new ready_at: every process's SSH pool reconnects"


def test_a_hibernated_sandbox_is_not_restored_onto_a_host_with_no_room_for_its_memory(
    host, driver, make_sandbox, fake_ssh
):
    # Hibernated, it held no memory; others took the host's room meanwhile.
    sandbox = make_sandbox(S.HIBERNATED, idle_for=HIBERNATE_AFTER + 1, domain=RUNNING)
    driver.managed_save(sandbox.name)
    make_sandbox(S.READY)  # another 256 MiB guest, running
    host.resources = {"memory_total_mb": sandbox.memory_mb + 100}
    host.save(update_fields=["resources"])
    cmd = Command.objects.create(sandbox=sandbox, command="echo hi", timeout_seconds=30)

    fields = tasks.run_command.run(str(cmd.pk))

    assert fields["status"] == CommandStatus.FAILED
    assert f"Sandbox {sandbox.name} cannot start now" in fields["error"]
    assert "committed" in fields["error"], fields["error"]
    assert fake_ssh == []
    assert state_of(sandbox) == S.HIBERNATED and driver.get_domain(sandbox.name).managed_save


def test_a_command_on_a_stopped_sandbox_still_fails(driver, make_sandbox, fake_ssh):
    sandbox = make_sandbox(S.STOPPED, domain=SHUTOFF)
    cmd = Command.objects.create(sandbox=sandbox, command="true", timeout_seconds=30)
    fields = tasks.run_command.run(str(cmd.pk))
    assert fields["status"] == CommandStatus.FAILED and fields["error"] == "sandbox is stopped"
    assert fake_ssh == []


def test_the_api_side_accepts_idle_sandboxes_where_it_accepts_ready_ones(make_sandbox, owner):
    for state, domain in ((S.PAUSED, PAUSED), (S.HIBERNATED, SHUTOFF)):
        sandbox = make_sandbox(state, domain=domain)
        op = services.create_snapshot(sandbox, owner, name=f"s-{state}")
        assert op.status == OperationStatus.PENDING
        with pytest.raises(Exception, match="disk_only"):
            services.create_snapshot(sandbox, owner, name="d", disk_only=True)


def test_a_snapshot_of_a_paused_sandbox_wakes_it_first_and_keeps_its_memory(
    driver, make_sandbox, owner
):
    sandbox = make_sandbox(S.PAUSED, domain=PAUSED)
    op = services.create_snapshot(sandbox, owner, name="s1")
    tasks.snapshot_sandbox.run(str(op.pk))
    snap = driver.snapshot_list(sandbox.name)[0]
    assert snap.state == RUNNING and snap.has_memory
    assert state_of(sandbox) == S.READY


@pytest.mark.parametrize("state", [S.PAUSED, S.HIBERNATED])
def test_stop_from_an_idle_state_forgets_the_saved_memory(driver, make_sandbox, owner, state):
    sandbox = make_sandbox(state, domain=PAUSED if state == S.PAUSED else RUNNING)
    if state == S.HIBERNATED:
        driver.managed_save(sandbox.name)
    op = services.stop_sandbox(sandbox, owner)
    tasks.stop_sandbox.run(str(op.pk))
    info = driver.get_domain(sandbox.name)
    assert state_of(sandbox) == S.STOPPED
    assert info.state == SHUTOFF and not info.managed_save
    assert driver.domains[sandbox.name].forced_off == 0, "resumed, then ACPI shutdown"


@pytest.mark.parametrize("state", [S.PAUSED, S.HIBERNATED])
def test_destroy_and_restore_work_from_an_idle_state(driver, make_sandbox, owner, state):
    sandbox = make_sandbox(state, domain=RUNNING)
    driver.snapshot_create(sandbox.name, "base")  # taken while it ran: with its memory
    services.snapshot_taken(
        services.Snapshot.objects.create(sandbox=sandbox, name="base"),
        has_memory=True,
        domain_state=RUNNING,
    )
    driver.suspend(sandbox.name) if state == S.PAUSED else driver.managed_save(sandbox.name)
    op = services.restore_snapshot(sandbox, owner, "base")
    tasks.restore_snapshot.run(str(op.pk))
    assert not driver.get_domain(sandbox.name).managed_save
    assert state_of(sandbox) == S.WAITING_FOR_IP

    other = make_sandbox(state, domain=PAUSED)
    op = services.destroy_sandbox(other, owner)
    tasks.destroy_sandbox.run(str(op.pk))
    assert state_of(other) == S.DESTROYED and driver.get_domain(other.name) is None


def test_the_ttl_reaper_destroys_idle_sandboxes(driver, make_sandbox, sent_tasks):
    paused = make_sandbox(S.PAUSED, domain=PAUSED)
    hibernated = make_sandbox(S.HIBERNATED, domain=SHUTOFF)
    Sandbox.objects.filter(pk__in=[paused.pk, hibernated.pk]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert tasks.reap_expired_sandboxes.run() == 2
    assert state_of(paused) == state_of(hibernated) == S.DESTROYING


# --- explicit pause and resume (the worker's half; the API's is in tests/e2e/test_idle.py) --


def test_an_explicit_pause_and_resume_answer_the_waiting_request(driver, make_sandbox):
    sandbox = make_sandbox()
    idle.run_power("req-pause", str(sandbox.pk), "pause")
    assert wakeups.wait("req-pause", 2, kind="power") == {"ok": True}
    assert state_of(sandbox) == S.PAUSED and driver.state(sandbox.name) == PAUSED

    idle.run_power("req-resume", str(sandbox.pk), "resume")
    assert wakeups.wait("req-resume", 2, kind="power") == {"ok": True}
    assert state_of(sandbox) == S.READY and driver.state(sandbox.name) == RUNNING


def test_an_explicit_resume_of_a_hibernated_sandbox_on_a_full_host_is_a_503_capacity(
    host, driver, make_sandbox, owner, monkeypatch
):
    sandbox = make_sandbox(S.HIBERNATED, domain=RUNNING)
    driver.managed_save(sandbox.name)
    make_sandbox(S.READY)
    host.resources = {"memory_total_mb": sandbox.memory_mb + 100}
    host.save(update_fields=["resources"])
    # The worker's half, run in place of the commands pool.
    monkeypatch.setattr(idle.queues, "enqueue", lambda task, *args, host: idle.run_power(*args))

    with pytest.raises(Unavailable, match="cannot start now") as refused:
        idle.resume_sandbox(sandbox, owner)

    assert refused.value.code == "capacity"
    assert state_of(sandbox) == S.HIBERNATED


def test_an_explicit_hibernation_saves_a_ready_or_paused_sandbox(driver, make_sandbox):
    for sandbox in (make_sandbox(), make_sandbox(S.PAUSED, domain=PAUSED)):
        idle.run_power(f"req-{sandbox.pk}", str(sandbox.pk), "hibernate")
        assert wakeups.wait(f"req-{sandbox.pk}", 2, kind="power") == {"ok": True}
        assert state_of(sandbox) == S.HIBERNATED
        assert driver.get_domain(sandbox.name).managed_save


def test_an_explicit_pause_is_refused_while_a_command_runs(driver, make_sandbox):
    sandbox = make_sandbox()
    Command.objects.create(sandbox=sandbox, command="sleep 60", timeout_seconds=90)
    with pytest.raises(Conflict, match="running a command"):
        idle.pause_now(sandbox)
    idle.run_power("req-busy", str(sandbox.pk), "pause")
    assert wakeups.wait("req-busy", 2, kind="power")["code"] == "busy"
    assert state_of(sandbox) == S.READY


# --- the reconcile understands the idle states ----------------------------------------------


def test_the_reconcile_marks_a_paused_sandbox_resumed_behind_its_back_ready(
    host, driver, make_sandbox
):
    sandbox = make_sandbox(S.PAUSED, domain=RUNNING)
    report = reconcile.reconcile_host(host)
    assert report.woken == [sandbox.name] and state_of(sandbox) == S.READY


def test_the_reconcile_marks_a_ready_sandbox_suspended_behind_its_back_paused_and_a_command_resumes_it(
    host, driver, make_sandbox, fake_ssh
):
    sandbox = make_sandbox(S.READY, domain=RUNNING)
    busy = make_sandbox(S.READY, domain=RUNNING)
    driver.suspend(sandbox.name)  # an operator's `virsh suspend`
    driver.suspend(busy.name)  # a snapshot's own pause: its operation is open
    services.new_operation("snapshot", busy, None, deadline_seconds=60)

    report = reconcile.reconcile_host(host)

    assert report.paused == [sandbox.name]
    assert state_of(sandbox) == S.PAUSED and state_of(busy) == S.READY
    cmd = Command.objects.create(sandbox=sandbox, command="echo hi", timeout_seconds=30)
    assert tasks.run_command.run(str(cmd.pk))["status"] == CommandStatus.FINISHED
    assert state_of(sandbox) == S.READY and driver.state(sandbox.name) == RUNNING


def test_the_reconcile_takes_a_saved_domain_for_hibernated_and_an_unsaved_one_for_stopped(
    host, driver, make_sandbox
):
    saved = make_sandbox(S.READY, domain=RUNNING)
    driver.managed_save(saved.name)  # `virsh managedsave` behind our back
    lost = make_sandbox(S.HIBERNATED, domain=SHUTOFF)  # its save image was removed

    report = reconcile.reconcile_host(host)

    assert report.hibernated == [saved.name] and state_of(saved) == S.HIBERNATED
    assert report.stopped == [lost.name] and state_of(lost) == S.STOPPED


def test_the_reconcile_leaves_a_hibernated_sandbox_with_its_save_image_alone(
    host, driver, make_sandbox
):
    sandbox = make_sandbox(S.HIBERNATED, domain=RUNNING)
    driver.managed_save(sandbox.name)
    assert not reconcile.reconcile_host(host)
    assert state_of(sandbox) == S.HIBERNATED
