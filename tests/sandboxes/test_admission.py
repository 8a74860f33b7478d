"""Admission (services.admit_boots): a host boots at most its boot slots' worth of guests at
once; further creates and starts wait in `queued`, first come first served, with their
positions, and are admitted as boots end. Against the fake driver; the e2e ring boots 40
real guests at once (tests/e2e/test_admission.py)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import OperationTimeout
from sandboxes import services, tasks
from sandboxes.choices import OperationStatus, SandboxState
from sandboxes.models import Host, Operation, Sandbox
from tests.support.races import at_once

pytestmark = pytest.mark.django_db

PROVISION = "sandboxes.provision_sandbox"


@pytest.fixture
def slots(host):
    """The host's worker reported two boot slots."""
    Host.objects.filter(pk=host.pk).update(boot_slots=2)
    return 2


@pytest.fixture
def create(host, source, django_user_model, sent_tasks, django_capture_on_commit_callbacks):
    owner = django_user_model.objects.create_user("quinn")

    def make(**kw) -> Operation:
        with django_capture_on_commit_callbacks(execute=True):
            return services.create_sandbox(owner, source_vm_name="debian-base", **kw)

    make.owner = owner
    return make


def state_of(op: Operation) -> str:
    return Sandbox.objects.get(pk=op.sandbox_id).state


def queue(host) -> list[tuple[str, int, str]]:
    """The host's queue as (sandbox name, position, its operation's message), by position."""
    rows = Sandbox.objects.filter(host=host, state=SandboxState.QUEUED).order_by("queue_position")
    return [
        (s.name, s.queue_position, s.operations.get(kind__in=["create", "start"]).message)
        for s in rows
    ]


def boot_ends(op: Operation, capture) -> None:
    """The guest of `op` is ready and its operation closed, as wait_ready does it."""
    Sandbox.objects.filter(pk=op.sandbox_id).update(state=SandboxState.READY)
    with capture(execute=True):
        services.finish_operation(op.pk, OperationStatus.SUCCEEDED, message="ready")


def test_it_boots_as_many_as_the_host_has_slots_and_queues_the_rest_in_order(
    create, slots, host, sent_tasks
):
    ops = [create() for _ in range(5)]

    assert [state_of(op) for op in ops] == ["requested"] * 2 + ["queued"] * 3
    assert sent_tasks == [(PROVISION, [str(op.pk)], host.queue_name) for op in ops[:2]]
    assert queue(host) == [
        (ops[i].sandbox.name, i - 1, f"queued: position {i - 1} of 3 on host {host.name}")
        for i in (2, 3, 4)
    ]
    # The answer of the create itself says where it waits.
    assert ops[4].sandbox.queue_position == 3 and ops[4].message.startswith("queued: position 3")
    assert ops[4].deadline is None and ops[4].started_at is None


def test_a_boot_that_ends_admits_the_next_in_line(
    create, slots, host, sent_tasks, django_capture_on_commit_callbacks
):
    ops = [create() for _ in range(5)]
    sent_tasks.clear()

    boot_ends(ops[0], django_capture_on_commit_callbacks)

    assert [state_of(op) for op in ops] == ["ready", "requested", "requested", "queued", "queued"]
    assert sent_tasks == [(PROVISION, [str(ops[2].pk)], host.queue_name)]
    assert [position for _, position, _ in queue(host)] == [1, 2]
    assert queue(host)[0][2] == f"queued: position 1 of 2 on host {host.name}"
    ops[2].refresh_from_db()
    assert ops[2].message == "admitted: a boot slot is free"


def test_a_failed_boot_frees_its_slot_too(
    create, slots, host, sent_tasks, django_capture_on_commit_callbacks, driver
):
    ops = [create() for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        tasks._fail_create(services.claim_operation(ops[0].pk), "the guest did not answer")
    assert [state_of(op) for op in ops] == ["error", "requested", "requested"]


def test_the_readiness_clock_and_the_deadline_start_at_admission_not_at_the_request(
    create, slots, host, settings, django_capture_on_commit_callbacks, driver, monkeypatch
):
    ops = [create() for _ in range(3)]
    # The third waited an hour in the queue: far past its readiness timeout and deadline,
    # had they counted from the request.
    hour_ago = timezone.now() - timedelta(hours=1)
    Operation.objects.filter(pk=ops[2].pk).update(created_at=hour_ago)
    Sandbox.objects.filter(pk=ops[2].sandbox_id).update(created_at=hour_ago)
    assert services.fail_stuck_operations() == 0

    boot_ends(ops[0], django_capture_on_commit_callbacks)

    op = Operation.objects.get(pk=ops[2].pk)
    ready_timeout = settings.VSB["READY_TIMEOUT_SECONDS"]
    assert timezone.now() - op.started_at < timedelta(seconds=5)
    assert op.deadline - op.started_at == timedelta(seconds=ready_timeout + 120)
    assert services.fail_stuck_operations() == 0
    # Provisioned and booting, its readiness poll does not time out.
    polls = []
    monkeypatch.setattr(tasks, "_enqueue_wait", lambda op, countdown: polls.append(op.pk))
    monkeypatch.setattr(tasks.provisioning, "console_host_key", lambda sandbox: None)
    tasks.provision_sandbox.run(str(op.pk))
    tasks.wait_ready.run(str(op.pk))
    op.refresh_from_db()
    assert op.status == OperationStatus.RUNNING, op.error
    assert state_of(op) == SandboxState.WAITING_FOR_IP


def test_a_queued_sandbox_can_be_destroyed_leaving_the_queue_and_nothing_behind(
    create, slots, host, driver, django_capture_on_commit_callbacks
):
    ops = [create() for _ in range(5)]
    leaving = ops[3]  # position 2
    sandbox = Sandbox.objects.get(pk=leaving.sandbox_id)

    with django_capture_on_commit_callbacks(execute=True):
        destroy = services.destroy_sandbox(sandbox, create.owner)

    leaving.refresh_from_db()
    assert leaving.status == OperationStatus.FAILED
    assert "destroyed while it waited for a boot slot" in leaving.error
    assert [name for name, _, _ in queue(host)] == [ops[2].sandbox.name, ops[4].sandbox.name]
    assert [position for _, position, _ in queue(host)] == [1, 2]
    tasks.destroy_sandbox.run(str(destroy.pk))
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.DESTROYED and sandbox.queue_position is None
    assert driver.list_domains() == []
    # Its slot was never taken: the two booting still hold both.
    assert [state_of(op) for op in ops[:3]] == ["requested", "requested", "queued"]


def test_a_start_waits_for_a_slot_like_a_create(
    create, slots, host, driver, sent_tasks, django_capture_on_commit_callbacks
):
    stopped = create(auto_start=False)
    tasks.provision_sandbox.run(str(stopped.pk))
    booting = [create() for _ in range(2)]
    sandbox = Sandbox.objects.get(pk=stopped.sandbox_id)
    sent_tasks.clear()

    with django_capture_on_commit_callbacks(execute=True):
        start = services.start_sandbox(sandbox, create.owner)

    assert state_of(start) == SandboxState.QUEUED and start.sandbox.queue_position == 1
    assert sent_tasks == []
    boot_ends(booting[0], django_capture_on_commit_callbacks)
    assert state_of(start) == SandboxState.BOOTING
    assert sent_tasks == [("sandboxes.start_sandbox", [str(start.pk)], host.queue_name)]


def test_a_stray_message_for_a_queued_boot_does_nothing(create, slots, driver):
    ops = [create() for _ in range(3)]
    tasks.provision_sandbox.run(str(ops[2].pk))  # a resend, a worker's recovery
    assert state_of(ops[2]) == SandboxState.QUEUED
    assert Operation.objects.get(pk=ops[2].pk).status != OperationStatus.FAILED
    assert len(driver.list_domains()) == 0


def test_the_sweep_admits_when_a_slot_is_free_but_nobody_admitted(
    create, slots, host, sent_tasks, django_capture_on_commit_callbacks
):
    ops = [create() for _ in range(3)]
    # The first boot ended in a worker that died before it could admit the next.
    Sandbox.objects.filter(pk=ops[0].sandbox_id).update(state=SandboxState.READY)
    sent_tasks.clear()

    with django_capture_on_commit_callbacks(execute=True):
        counts = tasks.resend_lost_work.run()

    assert counts["admitted"] == 1 and counts["resent"] == 0
    assert state_of(ops[2]) == SandboxState.REQUESTED
    assert sent_tasks == [(PROVISION, [str(ops[2].pk)], host.queue_name)]


def test_a_restarted_worker_does_not_send_queued_boots(create, slots, host, sent_tasks):
    from sandboxes import worker

    ops = [create() for _ in range(3)]
    sent_tasks.clear()
    assert worker.recover(host) == 2  # the two admitted creates, not the queued one
    assert state_of(ops[2]) == SandboxState.QUEUED


@pytest.mark.parametrize(
    ("domain_type", "cores", "override", "expected"),
    [("qemu", 2, 0, 2), ("kvm", 2, 0, 4), ("", 4, 0, 4), ("kvm", 8, 3, 3)],
)
def test_the_boot_slots_follow_the_cores_and_the_domain_type(
    settings, domain_type, cores, override, expected
):
    settings.VSB = {**settings.VSB, "BOOT_CONCURRENCY": override}
    assert services.boot_slots_for(domain_type, cores) == expected


def test_the_api_answers_the_queue_position_of_a_sandbox_and_its_operation(
    alice, host, source, slots, sent_tasks
):
    answers = [
        alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json")
        for _ in range(3)
    ]
    body = answers[2].json()
    assert answers[2].status_code == 202, body
    assert body["sandbox"]["state"] == "queued" and body["sandbox"]["queue_position"] == 1
    assert body["operation"]["queue_position"] == 1
    assert body["operation"]["message"] == f"queued: position 1 of 1 on host {host.name}"
    sandbox = alice.get(f"/v1/sandboxes/{body['sandbox']['id']}").json()["sandbox"]
    assert sandbox["queue_position"] == 1
    op = alice.get(f"/v1/operations/{body['operation']['id']}").json()
    assert op["queue_position"] == 1
    admitted = alice.get(f"/v1/operations/{answers[0].json()['operation']['id']}").json()
    assert admitted["queue_position"] is None


@pytest.mark.django_db(transaction=True)
def test_admitters_at_once_never_admit_more_than_the_slots(host, source, django_user_model):
    """Workers, requests and sweeps admit at once: the lock on the host row lets one decide
    at a time."""
    Host.objects.filter(pk=host.pk).update(boot_slots=2)
    owner = django_user_model.objects.create_user("rita")
    for i in range(10):
        Sandbox.objects.create(
            name=f"sbx-q{i}",
            agent_id="q",
            owner=owner,
            host=host,
            source=source,
            state=SandboxState.QUEUED,
            queued_at=timezone.now(),
        )
    for sandbox in Sandbox.objects.all():
        services.new_operation("create", sandbox, owner, deadline_seconds=None)
    at_once(lambda: services.admit_boots(host.pk))
    booting = Sandbox.objects.filter(state__in=services.BOOT_STATES).count()
    assert booting == 2
    assert sorted(
        Sandbox.objects.filter(state="queued").values_list("queue_position", flat=True)
    ) == list(range(1, 9))


def test_a_request_waiting_for_a_boot_does_not_count_its_time_in_the_queue(
    create, slots, monkeypatch
):
    ops = [create() for _ in range(3)]
    monkeypatch.setattr(services, "QUEUE_WAIT_LIMIT", 1.0)

    t0 = time.monotonic()
    with pytest.raises(OperationTimeout):
        services.wait_for_operation(ops[2], timeout=0.3)  # queued throughout
    assert time.monotonic() - t0 >= 1.2  # its 0.3 s after admission, which never came

    t0 = time.monotonic()
    with pytest.raises(OperationTimeout):
        services.wait_for_operation(ops[0], timeout=0.3)  # admitted at once
    assert time.monotonic() - t0 < 1.0
