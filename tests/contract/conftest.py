"""Contract ring: the API against its own OpenAPI schema, over real HTTP.

`contract_stack` is a real daphne server and a real Celery worker on the test database and the
test Redis db (tests/support/stack.py). The worker runs the FAKE hypervisor driver
(`VSB_DRIVER=fake`): the fuzzer creates, starts and snapshots hundreds of sandboxes, and
those must cost no VM. Its timeouts are short so that a verb told to wait for a guest that
never answers (the fake's guests have no address) fails in seconds, not minutes.

Personas: `agent` (an agent's API key) and `operator` (a staff user's API key holding every
permission of the project's apps but `run_inventory`: a dry run or apply would reach the
inventory's hosts, which the fuzzer invents, and tests only talk to loopback)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.conf import settings

from tests.support import stack

# Short enough that a wait on the fake driver's never-ready guests fails fast.
STACK_ENV = {
    "VSB_DRIVER": "fake",
    "VSB_READY_TIMEOUT_SECONDS": "3",
    "VSB_SHUTDOWN_TIMEOUT_SECONDS": "2",
    "VSB_APPROVAL_MAX_TIMEOUT_SECONDS": "2",
    "VSB_APPROVAL_DEFAULT_TIMEOUT_SECONDS": "2",
    "VSB_EGRESS": "off",
    # The fuzzer sends more than an agent may (600/min); 429 itself is documented on every
    # throttled route (tests/core/test_api_schema.py).
    "VSB_THROTTLE_AGENT": "off",
}
APPS = ("sandboxes", "approvals", "audit", "egress", "playbooks", "diffing", "terminals")
LEFT_OUT = ("run_inventory",)


@dataclass
class ContractStack:
    url: str
    keys: dict[str, str]  # persona: API key
    seeds: dict[str, str]  # path parameter values of real rows (see seed())
    workers: dict[str, stack.Proc]  # pool: its worker process
    web: stack.Proc

    def api(self, persona: str) -> stack.Api:
        return stack.Api(self.url, self.keys[persona])


def make_personas(blocker) -> dict[str, str]:
    """An agent and an operator, each with an API key: {persona: key}."""
    from django.contrib.auth.models import Permission, User

    from accounts import services as accounts

    with blocker.unblock():
        agent, _ = User.objects.get_or_create(username="fuzz-agent")
        operator, _ = User.objects.get_or_create(username="fuzz-operator", is_staff=True)
        perms = Permission.objects.filter(content_type__app_label__in=APPS).exclude(
            codename__in=LEFT_OUT
        )
        operator.user_permissions.add(*perms)
        return {
            "agent": accounts.create_api_key(agent, "contract")[1],
            "operator": accounts.create_api_key(operator, "contract")[1],
        }


def register_fake_source(blocker, tmp_path) -> None:
    """`debian-base` as the fake driver sees it: files that exist, contents it never reads."""
    from sandboxes.choices import SourceKind
    from sandboxes.models import SourceVM

    for name in ("base.qcow2", "vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"")
    with blocker.unblock():
        SourceVM.objects.update_or_create(
            name="debian-base",
            defaults={
                "kind": SourceKind.IMAGE,
                "disk_path": str(tmp_path / "base.qcow2"),
                "kernel": str(tmp_path / "vmlinuz"),
                "initrd": str(tmp_path / "initrd.img"),
                "cmdline": "root=/dev/vda rw console=ttyS0",
                "enabled": True,
            },
        )


def seed(agent: stack.Api, operator: stack.Api) -> dict[str, str]:
    """Real rows for the path parameters, made through the API: the links a stateful run
    would follow (create → get, snapshot, approve...), so fuzzed bodies and queries reach
    past the 404 of an unknown id. A stopped sandbox of the agent with a disk snapshot, its
    create operation, a pending approval, an inventory and an audit event."""
    status, body = agent.post(
        "/v1/sandboxes", {"source_vm_name": "debian-base", "auto_start": False}
    )
    assert status == 202, body
    sandbox = body["sandbox"]["id"]
    assert agent.wait_operation(body["operation"]["id"], timeout=30)["status"] == "succeeded"
    status, body = agent.post(f"/v1/sandboxes/{sandbox}/snapshots", {"name": "s1", "wait": True})
    assert status == 201, body
    status, approval = agent.post("/v1/approvals", {"prompt": "May I?", "action_type": "apply"})
    assert status == 201, approval
    status, inventory = operator.post(
        "/v1/inventories",
        {"name": "contract", "hosts": [{"name": "web1", "sandbox_id": sandbox}]},
    )
    assert status == 201, inventory
    status, events = operator.get("/v1/audit?limit=1")
    assert status == 200, events
    return {
        "sandbox": sandbox,
        "snapshot": "s1",
        "operation": body["operation"]["id"],
        "approval": approval["id"],
        "inventory": inventory["inventory"]["id"],
        "seq": str(events["results"][0]["seq"]),
    }


@pytest.fixture(scope="module")
def contract_stack(django_db_setup, django_db_blocker, tmp_path_factory):
    stack.flush_test_redis()
    keys = make_personas(django_db_blocker)
    register_fake_source(django_db_blocker, tmp_path_factory.mktemp("fake-source"))
    workers, web, url = stack.start_servers(**STACK_ENV)
    try:
        stack.wait_for_servers(django_db_blocker, workers, web, url)
        seeds = seed(stack.Api(url, keys["agent"]), stack.Api(url, keys["operator"]))
        yield ContractStack(url=url, keys=keys, seeds=seeds, workers=workers, web=web)
    finally:
        web.stop()
        for worker in workers.values():
            worker.stop()
        assert settings.VSB["DRIVER"] == "fake"
