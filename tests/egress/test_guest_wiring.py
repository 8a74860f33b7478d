"""What a new sandbox's domain is given for egress: the relay behind the proxy address and the
proxy on its kernel command line, or, with egress off, neither (the guest reaches nothing)."""

from __future__ import annotations

import pytest

from sandboxes import provisioning
from sandboxes.models import Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def sandbox(alice, host, source, sent_tasks, driver) -> Sandbox:
    body = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json").json()
    return Sandbox.objects.select_related("host", "source").get(pk=body["sandbox"]["id"])


@pytest.fixture
def driver(settings):
    from sandboxes import runtime

    settings.VSB = {**settings.VSB, "DRIVER": "fake"}
    runtime.reset_drivers()
    return runtime.get_driver()


def test_a_new_sandbox_reaches_the_proxy_through_the_relay_and_is_told_at_boot(sandbox, settings):
    spec = provisioning.clone_spec(sandbox)
    relay = spec.network.egress_relay
    assert relay[1:4] == ("-I", "-S", f"{settings.VSB['EGRESS_DIR']}/relay.py")
    assert relay[4:] == (f"{settings.VSB['EGRESS_DIR']}/{sandbox.host.name}.sock", str(sandbox.pk))
    assert "vsb.proxy=http://10.0.2.100:3128" in spec.cmdline.split()


def test_with_egress_off_there_is_no_relay_and_no_proxy(sandbox, settings):
    settings.VSB = {**settings.VSB, "EGRESS_ENABLED": False}
    spec = provisioning.clone_spec(sandbox)
    assert spec.network.egress_relay is None
    assert "vsb.proxy" not in spec.cmdline
