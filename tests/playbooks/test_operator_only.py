"""Production is operators' business (issue 11, item 5): inventories, their variables and the
dry runs and applies against them (status, stats, events with `--check --diff` output, the
run's websocket, their audit events) exist only for holders of an inventory permission. An
agent gets 404 on every route, also for runs of its own playbook; what it legitimately does
(read its own playbook) keeps working."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator

from accounts import services as accounts
from playbooks.models import PlaybookEvent, PlaybookRun

from .conftest import dry_run, grant

pytestmark = pytest.mark.django_db

SECRETS = ("hunter2", "tok-123", "prod-db-password=s3cr3t", "prod")


@pytest.fixture
def check_run(olga, playbook, inventory):
    """A finished dry run of alice's playbook against production, with an event carrying what
    `--check --diff` shows: a production file's contents."""
    run = dry_run(playbook, inventory, olga.user, events_count=1)
    PlaybookEvent.objects.create(
        run=run,
        seq=1,
        event="runner_on_ok",
        host="web-1",
        task="Write /etc/app.conf",
        data={"res": {"diff": {"before": "prod-db-password=s3cr3t\n"}}},
    )
    return run


def agent_routes(playbook, inventory, run) -> list[tuple[str, str, dict | None]]:
    """Every inventory, run and websocket-less route an agent could try, with bodies that an
    operator's request would have been accepted with."""
    target = {"inventory": inventory["id"]}
    return [
        ("get", "/v1/inventories", None),
        ("get", f"/v1/inventories/{inventory['id']}", None),
        (
            "post",
            "/v1/inventories",
            {"name": "mine", "hosts": [{"name": "h", "sandbox_id": str(playbook.sandbox_id)}]},
        ),
        ("post", f"/v1/playbooks/{playbook.id}/check", target),
        ("post", f"/v1/playbooks/{playbook.id}/check", {}),  # 404 before the body is even read
        ("post", f"/v1/playbooks/{playbook.id}/apply", target),
        ("get", f"/v1/playbook-runs/{run.id}", None),
        ("get", f"/v1/playbook-runs/{run.id}/events", None),
        ("post", f"/v1/playbook-runs/{run.id}/cancel", None),
    ]


@pytest.mark.parametrize("agent", ["alice", "bob"])
def test_agents_get_404_on_every_inventory_and_run_route(
    agent, request, playbook, inventory, check_run
):
    client = request.getfixturevalue(agent)  # alice owns the playbook; bob does not
    for method, url, body in agent_routes(playbook, inventory, check_run):
        response = getattr(client, method)(url, body, format="json")
        assert response.status_code == 404, (method, url, response.content)
        assert response.json()["error"]["code"] == "not_found"
        assert not any(secret in response.content.decode() for secret in SECRETS[:3]), (
            url,
            response.content,
        )
    assert not PlaybookRun.objects.exclude(pk=check_run.pk).exists(), "no run started"
    assert PlaybookRun.objects.get(pk=check_run.pk).cancel_requested is False


def test_anonymous_callers_get_401(anonymous, playbook, inventory, check_run):
    for method, url, body in agent_routes(playbook, inventory, check_run):
        assert getattr(anonymous, method)(url, body, format="json").status_code == 401, url


def test_staff_without_an_inventory_permission_gets_404_and_each_permission_opens_its_part(
    olivia, django_user_model, playbook, inventory, check_run, sent_tasks
):
    def as_olivia(*codenames):
        grant(olivia.user, *codenames)
        olivia.force_authenticate(
            django_user_model.objects.get(pk=olivia.user.pk)
        )  # fresh permission cache

    assert olivia.get("/v1/inventories").status_code == 404
    assert olivia.get(f"/v1/playbook-runs/{check_run.id}").status_code == 404

    as_olivia("view_inventory")
    listed = olivia.get("/v1/inventories").json()["results"]
    assert [i["name"] for i in listed] == ["prod"] and listed[0]["variables"] == {
        "db_password": "hunter2"
    }
    assert olivia.get(f"/v1/playbook-runs/{check_run.id}/events").json()["events"][0]["data"][
        "res"
    ]["diff"]
    target = {"inventory": inventory["id"]}
    for url in (
        f"/v1/playbooks/{playbook.id}/check",
        f"/v1/playbooks/{playbook.id}/apply",
        f"/v1/playbook-runs/{check_run.id}/cancel",
    ):
        response = olivia.post(url, target, format="json")
        assert (
            response.status_code == 403
            and "playbooks.run_inventory" in response.json()["error"]["message"]
        ), url
    response = olivia.post(
        "/v1/inventories", {"name": "x", "hosts": [{"name": "h"}]}, format="json"
    )
    assert (
        response.status_code == 403
        and "playbooks.add_inventory" in response.json()["error"]["message"]
    )

    as_olivia("run_inventory")
    response = olivia.post(f"/v1/playbooks/{playbook.id}/check", target, format="json")
    assert response.status_code == 202, response.content


def test_an_operator_with_the_permissions_uses_every_route(
    olga, playbook, inventory, check_run, sent_tasks
):
    assert olga.get("/v1/inventories").json()["results"][0]["hosts"][0]["variables"] == {
        "api_token": "tok-123"
    }
    assert olga.get(f"/v1/inventories/{inventory['id']}").json()["inventory"]["name"] == "prod"
    assert olga.get(f"/v1/playbook-runs/{check_run.id}").json()["run"]["host_stats"] == {
        "web-1": {"changed": 1}
    }
    events = olga.get(f"/v1/playbook-runs/{check_run.id}/events").json()["events"]
    assert events[0]["data"]["res"]["diff"]["before"] == "prod-db-password=s3cr3t\n"
    started = olga.post(
        f"/v1/playbooks/{playbook.id}/check", {"inventory": inventory["id"]}, format="json"
    )
    assert started.status_code == 202, started.content
    cancelled = olga.post(f"/v1/playbook-runs/{started.json()['run']['id']}/cancel", format="json")
    assert cancelled.json()["run"]["status"] == "canceled"
    response = olga.post(
        f"/v1/playbooks/{playbook.id}/apply", {"inventory": inventory["id"]}, format="json"
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "approval_required"


def test_the_agent_still_reads_its_own_playbook_and_its_audit_trail_shows_no_run(
    alice, olga, playbook, inventory, check_run, django_capture_on_commit_callbacks
):
    body = alice.get(f"/v1/playbooks/{playbook.id}").json()["playbook"]
    assert body["version"] == 1 and body["sandbox_id"] == str(playbook.sandbox_id)
    assert alice.get(f"/v1/playbooks/{playbook.id}?raw=1").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            olga.post(
                f"/v1/playbooks/{playbook.id}/check", {"inventory": inventory["id"]}, format="json"
            ).status_code
            == 202
        )
        assert (
            olga.post(
                f"/v1/playbooks/{playbook.id}/apply", {"inventory": inventory["id"]}, format="json"
            ).status_code
            == 409
        )  # opens an approval
    trail = alice.get(f"/v1/audit?sandbox={playbook.sandbox_id}&limit=500").json()["results"]
    verbs = {e["verb"] for e in trail}
    assert verbs, "alice reads her sandbox's trail"
    assert not {
        v
        for v in verbs
        if v.startswith(("playbook.check", "playbook.apply", "approval.", "inventory."))
    }
    assert "prod" not in str([e["data"] for e in trail])
    assert alice.get("/v1/approvals").json()["count"] == 0
    # The operator's trail still ties the runs to the sandbox the playbook came from.
    check = olga.get("/v1/audit?verb=playbook.check").json()["results"][0]
    assert (
        check["data"]["from_sandbox"] == str(playbook.sandbox_id)
        and check["data"]["inventory"] == "prod"
    )


def _run_socket(secret: str, run_id) -> WebsocketCommunicator:
    from config.asgi import application

    return WebsocketCommunicator(
        application,
        f"/ws/playbook-runs/{run_id}/",
        headers=[
            (b"origin", b"http://127.0.0.1"),
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {secret}".encode()),
        ],
    )


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_the_run_websocket_closes_agents_with_4403_and_streams_to_operators(
    alice, bob, olga, check_run
):
    operator_key = accounts.create_api_key(olga.user, "ws")[1]

    async def scenario():
        for secret in (alice.secret, bob.secret):
            ws = _run_socket(secret, check_run.id)
            connected, code = await ws.connect()
            assert (connected, code) == (False, 4403)
            await ws.disconnect()
        ws = _run_socket(operator_key, check_run.id)
        connected, _ = await ws.connect()
        assert connected
        first = await ws.receive_json_from(timeout=5)
        # The run ended before this client came: it is told so, instead of waiting forever.
        last = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return first, last

    first, last = asyncio.run(scenario())
    assert (
        first["type"] == "event"
        and first["data"]["res"]["diff"]["before"] == "prod-db-password=s3cr3t\n"
    )
    assert last == {
        "type": "finished",
        "status": "successful",
        "host_stats": {"web-1": {"changed": 1}},
        "error": "",
    }


def test_malformed_ids_are_404_for_operators_too(olga, inventory):
    dashes = "-" * 36
    for method, url, body in [
        ("post", f"/v1/playbooks/{dashes}/check", {"inventory": inventory["id"]}),
        ("get", f"/v1/inventories/{dashes}", None),
        ("get", f"/v1/playbook-runs/{dashes}", None),
    ]:
        assert getattr(olga, method)(url, body, format="json").status_code == 404, url
