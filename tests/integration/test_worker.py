"""Operations travel through Redis to a real worker on the host's queue, and a restarted
worker picks up what its predecessor left."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.utils import timezone

from sandboxes import services
from sandboxes.choices import OperationKind, OperationStatus, SandboxState
from sandboxes.models import Operation, Sandbox
from tests.support import stack

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_done(op: Operation, timeout: float = 30) -> Operation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op.refresh_from_db()
        if op.is_done:
            return op
        time.sleep(0.1)
    raise AssertionError(f"{op.kind} still {op.status}: {op.message}")


@pytest.fixture
def live_host(fake_worker, host):
    return host


def test_it_creates_and_destroys_through_a_real_worker(live_host, source, django_user_model):
    owner = django_user_model.objects.create_user("ingrid")
    op = services.create_sandbox(owner, source_vm_name="debian-base", auto_start=False)
    op = wait_done(op)
    assert op.status == OperationStatus.SUCCEEDED, op.error
    assert op.queue == f"kvm.{settings.VSB['HOST_NAME']}"
    sandbox = Sandbox.objects.get(pk=op.sandbox_id)
    assert sandbox.state == SandboxState.STOPPED

    destroy = wait_done(services.destroy_sandbox(sandbox, owner))
    assert destroy.status == OperationStatus.SUCCEEDED, destroy.error
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.DESTROYED and sandbox.destroyed_at


def test_it_resumes_work_left_by_a_dead_worker_when_a_new_one_starts(
    fake_worker, live_host, source, django_user_model, django_db_blocker
):
    owner = django_user_model.objects.create_user("rita")
    sandbox = Sandbox.objects.create(
        name="sbx-orphan01",
        owner=owner,
        host=live_host,
        source=source,
        state=SandboxState.DESTROYING,
        agent_id="rita",
        workdir="/var/lib/virsh-sandbox/test-sandboxes/sbx-orphan01",
    )
    # A destroy the previous worker had claimed (running) when it died; its message is gone.
    op = Operation.objects.create(
        kind=OperationKind.DESTROY,
        sandbox=sandbox,
        host=live_host,
        queue=live_host.queue_name,
        status=OperationStatus.RUNNING,
        attempt=1,
        started_at=timezone.now(),
    )
    fake_worker.kill()
    replacement = stack.worker(VSB_DRIVER="fake")
    replacement.start()
    try:
        stack.wait_for_heartbeat(replacement)
        op = wait_done(op)
        assert op.status == OperationStatus.SUCCEEDED, op.error
        assert op.attempt == 2
        sandbox.refresh_from_db()
        assert sandbox.state == SandboxState.DESTROYED
    finally:
        replacement.stop()
        fake_worker.start()
        stack.wait_for_heartbeat(fake_worker)
