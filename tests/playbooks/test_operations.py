"""Computing a diff and generating a playbook are Operations like every other slow step: the
API answers with a kept result at once, waits for the operation by default (as these routes
always did), or answers 202 with it for `wait=false`. The tasks run here in this process with
the disk reading and the generator replaced (e2e runs them on real VMs)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from core import wakeups
from core.queues import Work
from playbooks import build, diff_compute, generator, runs, runtime
from playbooks import tasks as playbook_tasks
from playbooks.choices import ResultStatus, RunStatus
from playbooks.models import Diff, Playbook, PlaybookRun
from sandboxes import services, tasks, worker
from sandboxes.choices import OperationKind, OperationStatus, SandboxState, SnapshotStatus
from sandboxes.models import Operation, Snapshot

pytestmark = pytest.mark.django_db

RESULT = {
    "files": {
        "added": [{"path": "/etc/a", "size": 1}, {"path": "/etc/b", "size": 2}],
        "modified": [{"path": "/etc/c", "size": 3, "unified_diff": "-x\n+y\n"}],
    },
    "packages": {"installed": [{"name": "vsb-hello", "version": "1", "arch": "all"}]},
    "units": {"enabled": []},
    "users": {"added": []},
    "groups": {"added": []},
    "notes": [],
    "summary": {"files": {"added": 2, "modified": 1}},
}


@pytest.fixture
def sandbox(alice, host, source, sent_tasks):
    op = services.create_sandbox(alice.user, source_vm_name="debian-base")
    services.set_sandbox_fields(op.sandbox_id, state=SandboxState.READY)
    sandbox = op.sandbox
    for name in ("a", "b"):
        Snapshot.objects.create(
            sandbox=sandbox, name=name, status=SnapshotStatus.READY, taken_at=timezone.now()
        )
    return sandbox


@pytest.fixture
def computed(monkeypatch):
    """The diffs computed on the 'host', in order (the disk reading replaced by RESULT)."""
    calls = []

    def compute(diff):
        calls.append(diff.pk)
        return {**RESULT, "commands": [], "duration_ms": 7}

    monkeypatch.setattr(diff_compute, "compute", compute)
    return calls


@pytest.fixture
def generated(monkeypatch):
    calls = []

    def generate(op_id, playbook):
        calls.append(playbook.pk)
        return generator.Generated(yaml="- hosts: all\n  tasks: []\n", warnings=["w"])

    monkeypatch.setattr(build, "generate", generate)
    monkeypatch.setattr(runtime, "syntax_check", lambda yaml_text, files: (True, "ok"))
    return calls


@pytest.fixture
def worker_inline(monkeypatch):
    """The host's worker runs each operation as soon as it is queued (inside the request),
    so that a waiting request finds it done; but for verification, which it only records."""
    verifies = []

    def enqueue(task, host, *args, countdown=None):
        if task is playbook_tasks.verify_playbook:
            verifies.append(args[0])
        else:
            task.run(*args)

    monkeypatch.setattr(services, "enqueue", enqueue)
    return verifies


def run(op_id) -> Operation:
    op = Operation.objects.get(pk=op_id)
    tasks.TASK_FOR_KIND[op.kind].run(str(op.pk))
    op.refresh_from_db()
    return op


def test_it_answers_202_with_a_diff_operation_and_then_serves_the_kept_diff(
    alice, sandbox, computed
):
    url = f"/v1/sandboxes/{sandbox.pk}/diff?from=a&to=b"
    response = alice.get(url + "&wait=false")
    assert response.status_code == 202, response.content
    op = response.json()["operation"]
    assert (op["kind"], op["status"], op["sandbox_id"]) == ("diff", "pending", str(sandbox.pk))
    # Asking again while it is under way joins the same operation.
    assert alice.get(url + "&wait=false").json()["operation"]["id"] == op["id"]
    done = run(op["id"])
    assert done.status == OperationStatus.SUCCEEDED and done.progress == 100
    diff = Diff.objects.get(pk=done.result["diff_id"])
    assert diff.status == ResultStatus.READY
    # Kept: answered at once, wait or not, without computing again.
    for query in ("", "&wait=false"):
        response = alice.get(url + query + "&limit=2&offset=1")
        assert response.status_code == 200, response.content
        body = response.json()["diff"]
        assert (body["id"], body["from"], body["to"]) == (str(diff.pk), "a", "b")
        assert body["files"] == {
            "count": 3,
            "limit": 2,
            "offset": 1,
            "results": [
                {"change": "added", "path": "/etc/b", "size": 2},
                {"change": "modified", "path": "/etc/c", "size": 3, "unified_diff": "-x\n+y\n"},
            ],
        }
        assert body["packages"] == RESULT["packages"] and body["summary"] == RESULT["summary"]
        assert body["duration_ms"] == 7 and body["commands"] == []
    assert computed == [diff.pk]


def test_a_diff_operation_run_twice_computes_once(alice, sandbox, computed):
    op = alice.get(f"/v1/sandboxes/{sandbox.pk}/diff?from=a&to=b&wait=false").json()["operation"]
    assert run(op["id"]).status == OperationStatus.SUCCEEDED
    # A redelivered message, or a restarted worker resuming it.
    assert run(op["id"]).status == OperationStatus.SUCCEEDED
    assert len(computed) == 1


def test_a_diff_to_now_is_read_back_by_the_id_its_operation_names(alice, sandbox, computed):
    base = f"/v1/sandboxes/{sandbox.pk}/diff"
    op = alice.get(base + "?from=a&wait=false").json()["operation"]
    diff_id = run(op["id"]).result["diff_id"]
    response = alice.get(f"{base}?diff_id={diff_id}&limit=1")
    assert response.status_code == 200, response.content
    assert response.json()["diff"]["to"] == "now"
    assert response.json()["diff"]["files"]["results"] == [
        {"change": "added", "path": "/etc/a", "size": 1}
    ]
    assert len(computed) == 1
    assert alice.get(f"{base}?diff_id=not-a-uuid").status_code == 404


def test_a_waiting_diff_request_answers_with_the_diff(alice, sandbox, computed, worker_inline):
    response = alice.get(f"/v1/sandboxes/{sandbox.pk}/diff?from=a")
    assert response.status_code == 200, response.content
    assert response.json()["diff"]["summary"] == RESULT["summary"]
    op = Operation.objects.get(kind=OperationKind.DIFF)
    assert op.status == OperationStatus.SUCCEEDED


def test_a_failed_diff_is_a_failed_operation_and_a_502(alice, sandbox, monkeypatch, worker_inline):
    def broken(diff):
        raise RuntimeError("the disk is unreadable")

    monkeypatch.setattr(diff_compute, "compute", broken)
    response = alice.get(f"/v1/sandboxes/{sandbox.pk}/diff?from=a&to=b")
    assert response.status_code == 502, response.content
    assert "the disk is unreadable" in response.json()["error"]["message"]
    op = Operation.objects.get(kind=OperationKind.DIFF)
    assert op.status == OperationStatus.FAILED and "unreadable" in op.error


def test_it_answers_202_with_a_generation_operation_then_the_ready_playbook(
    alice, sandbox, computed, generated
):
    url = f"/v1/sandboxes/{sandbox.pk}/playbook?from=a&to=b"
    response = alice.get(url + "&wait=false")
    assert response.status_code == 202, response.content
    op = response.json()["operation"]
    assert (op["kind"], op["status"]) == ("generate_playbook", "pending")
    assert alice.get(url + "&wait=false").json()["operation"]["id"] == op["id"]
    done = run(op["id"])
    assert done.status == OperationStatus.SUCCEEDED
    playbook = Playbook.objects.get(pk=done.result["playbook_id"])
    assert playbook.status == ResultStatus.READY and done.result["version"] == 1
    # A second attempt of the same operation stores nothing more.
    run(op["id"])
    assert playbook.versions.count() == 1 and generated == [playbook.pk]
    body = alice.get(url).json()["playbook"]
    assert (body["id"], body["from"], body["to"], body["version"]) == (
        str(playbook.pk),
        "a",
        "b",
        1,
    )
    assert body["warnings"] == ["w"] and body["syntax_ok"] is True and body["versions"] == [1]
    assert body["created_by"] == "alice" and body["files"] == []
    raw = alice.get(url + "&raw=1")
    assert raw.status_code == 200 and raw.content.decode() == "- hosts: all\n  tasks: []\n"


def test_a_failed_generation_is_a_failed_operation_and_is_tried_again(
    alice, sandbox, computed, generated, monkeypatch, worker_inline
):
    def broken(op_id, playbook):
        raise RuntimeError("boom")

    working = build.generate
    monkeypatch.setattr(build, "generate", broken)
    url = f"/v1/sandboxes/{sandbox.pk}/playbook?from=a&to=b"
    response = alice.get(url)
    assert response.status_code == 502, response.content
    assert (
        "generating the playbook failed: RuntimeError: boom" in response.json()["error"]["message"]
    )
    failed = Operation.objects.get(kind=OperationKind.GENERATE_PLAYBOOK)
    assert failed.status == OperationStatus.FAILED and "boom" in failed.error
    monkeypatch.setattr(build, "generate", working)
    response = alice.get(url)
    assert response.status_code == 200, response.content
    again = Operation.objects.filter(kind=OperationKind.GENERATE_PLAYBOOK).exclude(pk=failed.pk)
    assert [op.status for op in again] == [OperationStatus.SUCCEEDED]


def test_verifying_waits_for_the_generation_then_queues_the_verify_operation(
    alice, sandbox, computed, generated, worker_inline
):
    response = alice.post(
        f"/v1/sandboxes/{sandbox.pk}/playbook/verify", {"from": "a", "to": "b"}, format="json"
    )
    assert response.status_code == 202, response.content
    assert response.json()["operation"]["kind"] == "verify_playbook"
    generation = Operation.objects.get(kind=OperationKind.GENERATE_PLAYBOOK)
    assert generation.status == OperationStatus.SUCCEEDED
    assert worker_inline == [response.json()["operation"]["id"]]


def test_a_restarted_commands_pool_resumes_diff_and_generation_operations_on_its_queue(
    alice, sandbox, host, sent_tasks, django_capture_on_commit_callbacks
):
    alice.get(f"/v1/sandboxes/{sandbox.pk}/diff?from=a&to=b&wait=false")
    alice.get(f"/v1/sandboxes/{sandbox.pk}/playbook?from=a&to=b&wait=false")
    queue = f"kvm.{host.name}.commands"
    made = Operation.objects.filter(
        kind__in=[OperationKind.DIFF, OperationKind.GENERATE_PLAYBOOK]
    ).values_list("queue", flat=True)
    assert set(made) == {queue}
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        worker.recover(host, {Work.LIFECYCLE})
    names = {name for name, _, _ in sent_tasks}
    assert not names & {"sandboxes.compute_diff", "sandboxes.generate_playbook"}
    sent_tasks.clear()
    with django_capture_on_commit_callbacks(execute=True):
        worker.recover(host, {Work.COMMANDS})
    assert {(name, queue) for name, _, queue in sent_tasks} >= {
        ("sandboxes.compute_diff", queue),
        ("sandboxes.generate_playbook", queue),
    }


def test_the_end_of_a_run_wakes_its_waiter(olga, playbook, inventory):
    run = PlaybookRun.objects.create(
        version=playbook.latest, inventory_id=inventory["id"], kind="check", queue="control"
    )
    assert runs.wait_for_run(run, 0.05).status == RunStatus.PENDING  # not done: as it is
    claimed = runs.claim_run(run.pk)
    runs.finish_run(
        claimed, RunStatus.SUCCESSFUL, error="", host_stats={}, failed_tasks=[], events=0
    )
    assert wakeups.wait(run.pk, 1, kind=runs.RUN_WAKEUP) == {"status": "successful"}
    assert runs.wait_for_run(run, 5).status == RunStatus.SUCCESSFUL
