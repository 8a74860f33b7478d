"""The REST API's contract: authentication, scoping, input errors and the create flow.
Tasks are recorded, not run: the integration and e2e rings run a real worker."""

from __future__ import annotations

import pytest
from django.conf import settings

from accounts import services as accounts
from sandboxes.choices import SandboxState
from sandboxes.models import Command, Operation, Sandbox

pytestmark = pytest.mark.django_db(transaction=False)


def create(client, **body):
    payload = {"source_vm_name": "debian-base", "agent_id": "agent-1", **body}
    return client.post("/v1/sandboxes", payload, format="json")


def error_fields(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    return body["error"]["fields"]


def test_it_creates_a_sandbox_and_queues_provisioning_on_the_hosts_queue(
    alice, host, source, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = create(alice, vcpus=1, memory_mb=256, ttl_seconds=600)
    assert response.status_code == 202, response.content
    body = response.json()
    # A boot slot of the host was free: admitted at once, for the worker to take.
    assert body["sandbox"]["state"] == SandboxState.REQUESTED
    assert body["sandbox"]["queue_position"] is None
    assert body["operation"]["queue_position"] is None
    assert body["sandbox"]["source_vm_name"] == "debian-base"
    assert body["sandbox"]["ssh_host"] == "127.0.0.1"
    low, high = settings.VSB["PORT_RANGE"]
    assert low <= body["sandbox"]["ssh_port"] <= high
    assert body["operation"]["kind"] == "create"
    assert sent_tasks == [
        (
            "sandboxes.provision_sandbox",
            [body["operation"]["id"]],
            f"kvm.{settings.VSB['HOST_NAME']}",
        )
    ]


def test_it_accepts_the_originals_cpu_field_name(alice, host, source, sent_tasks):
    response = create(alice, cpu=2)
    assert response.status_code == 202, response.content
    assert response.json()["sandbox"]["vcpus"] == 2


def test_it_does_not_enqueue_when_the_transaction_rolls_back(alice, host, source, sent_tasks):
    # Without executing on-commit callbacks nothing may be sent: the worker must never see
    # an id that is not committed yet.
    create(alice)
    assert sent_tasks == []


@pytest.mark.parametrize(
    "body, field",
    [
        ({"source_vm_name": "no-such-vm"}, "source_vm_name"),
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": 10 * 1024 * 1024}, "memory_mb"),
        ({"memory_mb": "lots"}, "memory_mb"),
        ({"vcpus": 0}, "vcpus"),
        ({"vcpus": 999}, "vcpus"),
        ({"ttl_seconds": -5}, "ttl_seconds"),
        ({"colour": "blue"}, "colour"),
        ({"source_vm_name": ""}, "source_vm_name"),
    ],
)
def test_it_rejects_bad_create_input_naming_the_field(alice, host, source, sent_tasks, body, field):
    response = create(alice, **body)
    assert response.status_code == 400, response.content
    assert field in error_fields(response)
    assert not Sandbox.objects.exists()
    assert not Operation.objects.exists()


def test_it_rejects_a_missing_source_vm_name(alice, host, source):
    response = alice.post("/v1/sandboxes", {}, format="json")
    assert response.status_code == 400
    assert "source_vm_name" in error_fields(response)


def test_it_rejects_malformed_json(alice, host, source):
    response = alice.post("/v1/sandboxes", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_it_rejects_a_json_array_body(alice, host, source):
    response = alice.post("/v1/sandboxes", [1, 2], format="json")
    assert response.status_code == 400
    assert "non_field_errors" in error_fields(response)


def test_it_requires_an_api_key(anonymous, host, source):
    response = anonymous.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert anonymous.get("/v1/sandboxes").status_code == 401


def test_it_refuses_an_unknown_or_revoked_key(anonymous, alice, host):
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer vsb_deadbeef_nope")
    assert anonymous.get("/v1/sandboxes").status_code == 401
    accounts.revoke_api_keys(alice.user, "test")
    assert alice.get("/v1/sandboxes").status_code == 401


def test_it_accepts_the_key_in_x_api_key_too(anonymous, alice, host):
    anonymous.credentials(HTTP_X_API_KEY=alice.secret)
    assert anonymous.get("/v1/sandboxes").status_code == 200


def test_it_hides_another_agents_sandbox_as_not_found(alice, bob, host, source, sent_tasks):
    sandbox_id = create(alice).json()["sandbox"]["id"]
    for method, path in [
        ("get", f"/v1/sandboxes/{sandbox_id}"),
        ("post", f"/v1/sandboxes/{sandbox_id}/stop"),
        ("post", f"/v1/sandboxes/{sandbox_id}/start"),
        ("delete", f"/v1/sandboxes/{sandbox_id}"),
        ("get", f"/v1/sandboxes/{sandbox_id}/commands"),
    ]:
        response = getattr(bob, method)(path, format="json")
        assert response.status_code == 404, (method, path, response.content)
    response = bob.post(f"/v1/sandboxes/{sandbox_id}/command", {"command": "id"}, format="json")
    assert response.status_code == 404
    assert bob.get("/v1/sandboxes").json()["count"] == 0
    assert alice.get("/v1/sandboxes").json()["count"] == 1


def test_it_lets_an_operator_see_every_sandbox(alice, olivia, host, source, sent_tasks):
    create(alice)
    assert olivia.get("/v1/sandboxes").json()["count"] == 1


def test_it_answers_404_for_a_malformed_sandbox_id(alice, host):
    assert alice.get("/v1/sandboxes/not-a-uuid").status_code == 404


def test_it_rejects_an_empty_command(alice, host, source, sent_tasks):
    sandbox = Sandbox.objects.get(pk=create(alice).json()["sandbox"]["id"])
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.READY)
    for body, field in [
        ({"command": ""}, "command"),
        ({"command": "   "}, "command"),
        ({}, "command"),
        ({"command": "id", "timeout_seconds": 0}, "timeout_seconds"),
        ({"command": "id", "env": {"BAD NAME": "x"}}, "env"),
        ({"command": "id", "cwd": "relative/path"}, "cwd"),
        ({"command": "x" * 200_000}, "command"),
        ({"command": "id", "env": ["not", "a", "map"]}, "env"),
    ]:
        response = alice.post(f"/v1/sandboxes/{sandbox.pk}/command", body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert field in error_fields(response), body
    assert not Command.objects.exists()


def test_it_refuses_a_command_when_the_sandbox_is_not_ready(alice, host, source, sent_tasks):
    sandbox_id = create(alice).json()["sandbox"]["id"]
    response = alice.post(f"/v1/sandboxes/{sandbox_id}/command", {"command": "id"}, format="json")
    assert response.status_code == 409
    assert "requested" in response.json()["error"]["message"]


def test_it_refuses_to_start_a_sandbox_that_is_being_created(alice, host, source, sent_tasks):
    sandbox_id = create(alice).json()["sandbox"]["id"]
    response = alice.post(f"/v1/sandboxes/{sandbox_id}/start", format="json")
    assert response.status_code == 409


def test_it_destroys_with_an_operation_and_refuses_a_second_destroy(
    alice, host, source, sent_tasks, django_capture_on_commit_callbacks
):
    sandbox_id = create(alice).json()["sandbox"]["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.delete(f"/v1/sandboxes/{sandbox_id}")
    assert response.status_code == 202
    assert response.json()["sandbox"]["state"] == SandboxState.DESTROYING
    assert sent_tasks[-1][0] == "sandboxes.destroy_sandbox"
    again = alice.delete(f"/v1/sandboxes/{sandbox_id}")
    assert again.status_code == 202
    assert again.json()["operation"]["id"] == response.json()["operation"]["id"]


def test_it_answers_503_when_no_worker_serves_the_host(alice, host, source):
    host.last_heartbeat = None
    host.save(update_fields=["last_heartbeat"])
    response = create(alice)
    assert response.status_code == 503
    assert f"kvm.{settings.VSB['HOST_NAME']}" in response.json()["error"]["message"]


def test_it_lists_operations_scoped_to_the_agent(alice, bob, host, source, sent_tasks):
    op_id = create(alice).json()["operation"]["id"]
    assert alice.get(f"/v1/operations/{op_id}").status_code == 200
    assert bob.get(f"/v1/operations/{op_id}").status_code == 404


def test_it_filters_sandboxes_by_state_and_agent(alice, host, source, sent_tasks):
    create(alice, agent_id="one")
    create(alice, agent_id="two")
    assert alice.get("/v1/sandboxes?agent_id=one").json()["count"] == 1
    assert alice.get("/v1/sandboxes?state=requested").json()["count"] == 2
    assert alice.get("/v1/sandboxes?state=ready").json()["count"] == 0


def test_it_serves_health_without_authentication(anonymous, host):
    response = anonymous.get("/v1/health")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["database"] == "ok" and body["broker"] == "ok"
    assert (
        body["hosts"][0]["name"] == settings.VSB["HOST_NAME"] and body["hosts"][0]["alive"] is True
    )


def test_it_lists_source_vms(alice, host, source):
    body = alice.get("/v1/vms").json()
    assert [vm["name"] for vm in body["vms"]] == ["debian-base"]


def test_it_builds_a_valid_openapi_schema(alice):
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.validation import validate_schema

    schema = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)
    assert any(path.startswith("/v1/sandboxes/{id}/command") for path in schema["paths"])
    response = alice.get("/api/schema/")
    assert response.status_code == 200
