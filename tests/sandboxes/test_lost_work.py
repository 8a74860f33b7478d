"""Work whose task message was lost (a Redis restart, a broker that could not be reached, a
database restart that failed a task mid-step) is sent again by the periodic sweep
`services.resend_lost_work`, a bounded number of times, and then fails with a reason; a
command runs at most once, and one whose worker is gone is failed. The claims that make
resending safe are compare-and-sets. The e2e ring restarts the real services
(tests/e2e/test_restarts.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError

from core import queues, wakeups
from sandboxes import services, tasks
from sandboxes.choices import CommandStatus, OperationStatus, SandboxState
from sandboxes.models import Command, Operation, Sandbox

pytestmark = pytest.mark.django_db

STALE = settings.VSB["OPERATION_STALE_SECONDS"]
QUEUE = queues.queue_for(queues.Work.LIFECYCLE, settings.VSB["HOST_NAME"])
COMMANDS_QUEUE = queues.queue_for(queues.Work.COMMANDS, settings.VSB["HOST_NAME"])


@pytest.fixture
def create_op(host, source, django_user_model, sent_tasks):
    owner = django_user_model.objects.create_user("lou")
    op = services.create_sandbox(owner, source_vm_name="debian-base")
    sent_tasks.clear()
    return op


@pytest.fixture
def sweep(django_capture_on_commit_callbacks):
    """Run the sweep as its periodic task does: what it sends leaves when it commits."""

    def run() -> dict[str, int]:
        with django_capture_on_commit_callbacks(execute=True):
            return tasks.resend_lost_work.run()

    return run


def silent_for(op: Operation, seconds: float, **fields) -> None:
    """The operation's last sign of life was `seconds` ago."""
    Operation.objects.filter(pk=op.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=seconds), **fields
    )


def ready_command(op: Operation, **fields) -> Command:
    Sandbox.objects.filter(pk=op.sandbox_id).update(state=SandboxState.READY)
    return Command.objects.create(
        sandbox=op.sandbox, command="sleep 20", timeout_seconds=60, **fields
    )


def test_a_create_whose_task_was_never_delivered_is_sent_again(sweep, create_op, sent_tasks):
    # Sent at its admission (its sign of life), which was at once: a boot slot was free.
    Operation.objects.filter(pk=create_op.pk).update(
        created_at=timezone.now() - timedelta(seconds=STALE + 1),
        heartbeat_at=timezone.now() - timedelta(seconds=STALE + 1),
    )
    assert sweep()["resent"] == 1
    assert sent_tasks == [("sandboxes.provision_sandbox", [str(create_op.pk)], QUEUE)]
    create_op.refresh_from_db()
    assert create_op.resends == 1
    assert sweep()["resent"] == 0, "the resend is a sign of life"


def test_a_running_operation_that_stopped_beating_is_sent_again(sweep, create_op, sent_tasks):
    silent_for(create_op, STALE + 1, status=OperationStatus.RUNNING, held_until=None)
    assert sweep()["resent"] == 1
    assert sent_tasks == [("sandboxes.provision_sandbox", [str(create_op.pk)], QUEUE)]


def test_work_that_beats_or_that_a_worker_holds_is_left_alone(sweep, create_op, sent_tasks):
    silent_for(create_op, STALE - 5, status=OperationStatus.RUNNING)
    assert sweep()["resent"] == 0
    silent_for(create_op, STALE + 1, held_until=timezone.now() + timedelta(seconds=5))
    assert sweep()["resent"] == 0
    assert sent_tasks == []


def test_it_waits_twice_as_long_after_each_resend(sweep, create_op, sent_tasks):
    silent_for(create_op, 2 * STALE - 1, resends=1)
    assert sweep()["resent"] == 0
    silent_for(create_op, 2 * STALE + 1)
    assert sweep()["resent"] == 1


def test_it_gives_up_after_the_last_resend_saying_why(sweep, create_op, settings):
    Sandbox.objects.filter(pk=create_op.sandbox_id).update(state=SandboxState.BOOTING)
    resends = settings.VSB["OPERATION_MAX_RESENDS"]
    silent_for(create_op, STALE * 2**5 + 1, resends=resends, status=OperationStatus.RUNNING)
    assert sweep()["failed"] == 1
    create_op.refresh_from_db()
    sandbox = Sandbox.objects.get(pk=create_op.sandbox_id)
    assert create_op.status == OperationStatus.ERRORED
    assert f"lost {resends + 1} times" in create_op.error and "restart" in create_op.error
    assert sandbox.state == SandboxState.ERROR and "lost" in sandbox.error


def test_the_work_of_a_host_without_a_live_worker_waits_for_its_restart(sweep, create_op, host):
    silent_for(create_op, STALE + 1)
    host.last_heartbeat = timezone.now() - timedelta(minutes=5)
    host.save(update_fields=["last_heartbeat"])
    assert sweep() == {
        "resent": 0,
        "failed": 0,
        "commands_resent": 0,
        "commands_failed": 0,
        "admitted": 0,
    }


def test_a_second_message_is_not_claimed_while_the_first_holds_the_operation(create_op):
    assert services.claim_operation(create_op.pk) is not None
    assert services.claim_operation(create_op.pk) is None
    services.release_operation(create_op.pk)
    assert services.claim_operation(create_op.pk).attempt == 2
    Operation.objects.filter(pk=create_op.pk).update(
        held_until=timezone.now() - timedelta(seconds=1)
    )
    assert services.claim_operation(create_op.pk) is not None, "an expired hold is no hold"


def test_a_task_lets_go_of_its_operation_when_it_returns(create_op, driver, monkeypatch):
    monkeypatch.setattr(tasks, "_enqueue_wait", lambda op, countdown: None)
    tasks.provision_sandbox.run(str(create_op.pk))
    create_op.refresh_from_db()
    assert create_op.status == OperationStatus.RUNNING and create_op.held_until is None


def test_a_retry_is_not_taken_for_lost_before_its_backoff_ends(sweep, create_op):
    services.claim_operation(create_op.pk)
    services.report_progress(create_op.pk, 10, "retrying after: busy", quiet_for=STALE + 10)
    services.release_operation(create_op.pk)
    Operation.objects.filter(pk=create_op.pk).update(
        created_at=timezone.now() - timedelta(minutes=5)
    )
    assert sweep()["resent"] == 0


def test_a_command_no_worker_took_is_sent_again_then_failed_unrun(
    sweep, create_op, sent_tasks, settings
):
    cmd = ready_command(create_op, heartbeat_at=timezone.now() - timedelta(seconds=STALE + 1))
    assert sweep()["commands_resent"] == 1
    assert sent_tasks == [("sandboxes.run_command", [str(cmd.pk)], COMMANDS_QUEUE)]
    Command.objects.filter(pk=cmd.pk).update(
        resends=settings.VSB["OPERATION_MAX_RESENDS"],
        heartbeat_at=timezone.now() - timedelta(seconds=STALE * 2**5 + 1),
    )
    assert sweep()["commands_failed"] == 1
    cmd.refresh_from_db()
    assert cmd.status == CommandStatus.FAILED and "did not run" in cmd.error


def test_a_command_whose_worker_stopped_beating_is_failed_and_its_waiter_told(sweep, create_op):
    now = timezone.now()
    cmd = ready_command(create_op, claimed_at=now, heartbeat_at=now - timedelta(seconds=STALE + 1))
    assert sweep()["commands_failed"] == 0, "a database restart is shorter"
    Command.objects.filter(pk=cmd.pk).update(heartbeat_at=now - timedelta(seconds=3 * STALE + 1))
    assert sweep()["commands_failed"] == 1
    fields = wakeups.wait(cmd.pk, 2)
    assert fields["status"] == CommandStatus.FAILED and "may or may not" in fields["error"]


def test_a_command_runs_at_most_once_however_many_messages_arrive(create_op):
    cmd = ready_command(create_op)
    assert services.claim_command(cmd.pk) is not None
    assert services.claim_command(cmd.pk) is None
    assert tasks.run_command.run(str(cmd.pk)) == {}, "the resend finds it taken"


def test_a_request_waiting_on_a_command_re_reads_its_row_when_no_wake_up_comes(
    create_op, monkeypatch
):
    monkeypatch.setattr(services, "COMMAND_RECHECK_SECONDS", 0.1)
    cmd = ready_command(create_op)
    services.finish_command(cmd.pk, status=CommandStatus.FAILED, error="lost")
    assert services.wait_for_command(cmd, 5).status == CommandStatus.FAILED


def test_a_request_does_not_fail_when_the_broker_cannot_be_reached(
    host, source, django_user_model, monkeypatch, django_capture_on_commit_callbacks
):
    from config.celery import app

    def broker_away(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app, "send_task", broker_away)
    owner = django_user_model.objects.create_user("nina")
    with django_capture_on_commit_callbacks(execute=True):
        op = services.create_sandbox(owner, source_vm_name="debian-base")
    assert Operation.objects.get(pk=op.pk).status == OperationStatus.PENDING
