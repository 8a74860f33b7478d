"""Snapshots, restore and fork through the API: the input contract and the state machine,
with the tasks run in this process on the fake driver (e2e runs them on real VMs)."""

from __future__ import annotations

import pytest

from sandboxes import tasks
from sandboxes.choices import SandboxState
from sandboxes.models import Operation, Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready_sandbox(alice, host, source, sent_tasks, driver, monkeypatch):
    monkeypatch.setattr(tasks, "_enqueue_wait", lambda op, countdown: None)
    body = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json").json()
    tasks.provision_sandbox.run(body["operation"]["id"])
    Sandbox.objects.filter(pk=body["sandbox"]["id"]).update(state=SandboxState.READY)
    return Sandbox.objects.get(pk=body["sandbox"]["id"])


def run_last(kind: str) -> Operation:
    op = Operation.objects.filter(kind=kind).order_by("-created_at").first()
    tasks.TASK_FOR_KIND[kind].run(str(op.pk))
    op.refresh_from_db()
    return op


def test_it_takes_lists_and_gets_a_snapshot(alice, ready_sandbox):
    response = alice.post(
        f"/v1/sandboxes/{ready_sandbox.pk}/snapshots",
        {"name": "base", "description": "clean"},
        format="json",
    )
    assert response.status_code == 202, response.content
    assert response.json()["snapshot"]["status"] == "creating"
    assert run_last("snapshot").status == "succeeded"
    listed = alice.get(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots").json()
    assert (listed["count"], listed["next"]) == (1, None)
    assert [(s["name"], s["status"], s["has_memory"]) for s in listed["results"]] == [
        ("base", "ready", True)
    ]
    one = alice.get(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots/base").json()
    assert one["description"] == "clean"


def test_it_restores_a_memory_snapshot_to_a_running_guest(alice, ready_sandbox, driver):
    alice.post(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots", {"name": "base"}, format="json")
    run_last("snapshot")
    response = alice.post(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots/base/restore", format="json")
    assert response.status_code == 202, response.content
    assert response.json()["sandbox"]["state"] == "restoring"
    run_last("restore")
    ready_sandbox.refresh_from_db()
    assert ready_sandbox.state == SandboxState.WAITING_FOR_IP  # wait_ready takes it from here
    assert driver.domains[ready_sandbox.name].time_set == 1


@pytest.mark.parametrize(
    "path, body, status, field",
    [
        ("snapshots", {"name": "bad name"}, 400, "name"),
        ("snapshots", {"name": ""}, 400, "name"),
        ("snapshots", {}, 400, "name"),
        ("snapshots", {"name": "x", "disk_only": True}, 400, "disk_only"),
        ("snapshots", {"name": "x", "colour": 1}, 400, "colour"),
        ("snapshots/nope/restore", {}, 404, None),
    ],
)
def test_it_rejects_bad_snapshot_requests(alice, ready_sandbox, path, body, status, field):
    response = alice.post(f"/v1/sandboxes/{ready_sandbox.pk}/{path}", body, format="json")
    assert response.status_code == status, response.content
    if field:
        assert field in response.json()["error"]["fields"]
    else:
        assert "nope" in response.json()["error"]["message"]


def test_it_refuses_a_duplicate_snapshot_name(alice, ready_sandbox):
    url = f"/v1/sandboxes/{ready_sandbox.pk}/snapshots"
    assert alice.post(url, {"name": "base"}, format="json").status_code == 202
    response = alice.post(url, {"name": "base"}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "duplicate"


def test_it_refuses_snapshots_of_a_destroyed_sandbox(alice, ready_sandbox):
    Sandbox.objects.filter(pk=ready_sandbox.pk).update(state=SandboxState.DESTROYED)
    response = alice.post(
        f"/v1/sandboxes/{ready_sandbox.pk}/snapshots", {"name": "x"}, format="json"
    )
    assert response.status_code == 409


def test_it_hides_another_agents_snapshots(bob, ready_sandbox):
    assert bob.get(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots").status_code == 404


def test_it_forks_from_a_snapshot_on_the_origins_host(alice, ready_sandbox, driver):
    alice.post(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots", {"name": "after"}, format="json")
    run_last("snapshot")
    response = alice.post(
        "/v1/sandboxes",
        {"from_sandbox": str(ready_sandbox.pk), "from_snapshot": "after"},
        format="json",
    )
    assert response.status_code == 202, response.content
    fork = Sandbox.objects.get(pk=response.json()["sandbox"]["id"])
    assert fork.host == ready_sandbox.host and fork.forked_from.name == "after"
    tasks.provision_sandbox.run(response.json()["operation"]["id"])
    spec = driver.domains[fork.name].spec
    assert spec.from_snapshot == (f"{ready_sandbox.workdir}/disk.qcow2", "after")
    assert f"vsb.instance={fork.pk}" in spec.cmdline


@pytest.mark.parametrize(
    "body, field",
    [
        ({"from_snapshot": "after"}, "from_sandbox"),
        (
            {"from_sandbox": "00000000-0000-0000-0000-000000000000", "from_snapshot": "x"},
            "from_sandbox",
        ),
        ({"from_snapshot": "missing", "use_origin": True}, "use_origin"),
    ],
)
def test_it_rejects_bad_fork_requests(alice, ready_sandbox, body, field):
    response = alice.post("/v1/sandboxes", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_it_refuses_to_fork_another_agents_sandbox(bob, ready_sandbox):
    response = bob.post(
        "/v1/sandboxes",
        {"from_sandbox": str(ready_sandbox.pk), "from_snapshot": "after"},
        format="json",
    )
    assert response.status_code == 400
    assert "from_sandbox" in response.json()["error"]["fields"]


def test_it_deletes_a_snapshot(alice, ready_sandbox, driver):
    alice.post(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots", {"name": "tmp"}, format="json")
    run_last("snapshot")
    assert alice.delete(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots/tmp").status_code == 202
    assert run_last("delete_snapshot").status == "succeeded"
    assert alice.get(f"/v1/sandboxes/{ready_sandbox.pk}/snapshots").json()["results"] == []
    assert driver.snapshot_list(ready_sandbox.name) == []
