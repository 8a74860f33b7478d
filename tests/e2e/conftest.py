"""End-to-end ring: real libvirtd + QEMU (TCG here) guests from the project's own image, the
real Celery worker pools of the host (lifecycle, commands, terminals), a real daphne server, and HTTP
between them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from core import wakeups
from sandboxes import services
from tests.support import stack

pytestmark = pytest.mark.e2e


def image_dir() -> Path:
    """The guest image scripts/test.sh built (or found in its cache)."""
    found = os.environ.get("VSB_TEST_IMAGE_DIR")
    if not found:
        out = subprocess.run(
            ["bash", str(stack.ROOT / "scripts" / "build-guest-image.sh")],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        found = out.strip().splitlines()[-1]
    return Path(found)


def test_domains(sandbox_dir: str = "") -> list[str]:
    """Domains whose disks live in the test sandbox directory (or `sandbox_dir`, another
    test host's): ours to clean."""
    sandbox_dir = sandbox_dir or settings.VSB["SANDBOX_DIR"]
    names = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout.split()
    ours = []
    for name in names:
        xml = subprocess.run(
            ["virsh", "-c", "qemu:///system", "dumpxml", name], stdout=subprocess.PIPE, text=True
        ).stdout
        if sandbox_dir in xml:
            ours.append(name)
    return ours


def sweep_test_domains(sandbox_dir: str = "") -> list[str]:
    leftovers = test_domains(sandbox_dir)
    for name in leftovers:
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True)
        subprocess.run(
            ["virsh", "-c", "qemu:///system", "undefine", name, "--snapshots-metadata", "--nvram"],
            capture_output=True,
        )
    return leftovers


def register_image_and_agents(blocker) -> dict[str, str]:
    """Register the guest image as the source `debian-base` and give the agents e2e-alice and
    e2e-bob an API key each (through `blocker`, pytest-django's db blocker): {name: key}."""
    from django.contrib.auth.models import User

    from accounts import services as accounts

    manifest = json.loads((image_dir() / "manifest.json").read_text())
    with blocker.unblock():
        services.register_image("debian-base", image_dir(), manifest)
        keys = {}
        for name in ("e2e-alice", "e2e-bob"):
            user, _ = User.objects.get_or_create(username=name)
            keys[name] = accounts.create_api_key(user, "e2e")[1]
    return keys


def egress_socket() -> str:
    from egress import services

    return str(services.socket_path(settings.VSB["HOST_NAME"]))


@pytest.fixture(scope="module")
def e2e_stack(request, django_db_setup, django_db_blocker):
    """The host's three worker pools (libvirt driver, as scripts/run.sh starts them), a
    daphne server and the egress proxy on the test database, plus agent keys; a module may
    add settings for its processes in `STACK_ENV`. Module-scoped: VMs are expensive, so a
    module shares them."""
    sweep_test_domains()
    shutil.rmtree(settings.VSB["SANDBOX_DIR"], ignore_errors=True)
    stack.flush_test_redis()
    users = register_image_and_agents(django_db_blocker)
    env = {
        "VSB_DRIVER": "libvirt",
        "VSB_COMMAND_OUTPUT_LIMIT": "65536",
        "VSB_READY_TIMEOUT_SECONDS": "120",
        **getattr(request.module, "STACK_ENV", {}),
    }
    workers, web, url = stack.start_servers(**env)
    egress = stack.egress_proxy(**env)
    egress.start()
    handle = E2EStack(
        workers=workers,
        web=web,
        egress=egress,
        alice=stack.Api(url, users["e2e-alice"]),
        bob=stack.Api(url, users["e2e-bob"]),
        anonymous=stack.Api(url, None),
        blocker=django_db_blocker,
        env=env,
    )
    try:
        stack.wait_for_servers(django_db_blocker, workers, web, url)
        stack.wait_for_socket(egress, egress_socket())
        yield handle
    finally:
        web.stop()
        egress.stop()
        # A test may have replaced a worker (restart after SIGKILL): stop the current ones.
        for proc in handle.workers.values():
            proc.stop()
        leftovers = sweep_test_domains()
        with django_db_blocker.unblock():
            # The module's rows were committed for the servers to see: flush them so the
            # next module (or ring) starts from an empty database, as a TransactionTestCase would.
            from django.core.management import call_command

            call_command("flush", interactive=False, verbosity=0)
        assert not leftovers, f"test left domains behind: {leftovers}"


@pytest.fixture(scope="module")
def sandbox(e2e_stack):
    """A ready debian-base sandbox of alice's, shared by the module."""
    with e2e_stack.alice.ready_sandbox() as sandbox:
        yield sandbox


def run_host_pass(e2e_stack, capture, task, kind: str, timeout: float) -> dict:
    """One per-host pass (`task`: the reconcile, the idle sweep) on this host's worker, sent
    as the beat's entry sends it; its report, published as a wake-up of `kind`."""
    from sandboxes.models import Host

    key = f"e2e-{kind}-{uuid.uuid4().hex}"
    with e2e_stack.blocker.unblock():
        host = Host.objects.get(name=settings.VSB["HOST_NAME"])
        with capture(execute=True):
            services.enqueue(task, host, host.pk, key)
    report = wakeups.wait(key, timeout, kind=kind)
    assert report is not None, f"the worker did not run the {kind} pass"
    return report


class E2EStack:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    @property
    def worker(self) -> stack.Proc:
        """The lifecycle pool: operations, readiness polls, the host's heartbeat."""
        return self.workers["lifecycle"]

    def restart_worker(self, pool: str = "lifecycle") -> None:
        """Start a new process for `pool` (a test killed the old one) and wait until it has
        recovered what the old one left."""
        self.workers[pool] = stack.worker(pool, **self.env)
        self.workers[pool].start()
        if pool == "lifecycle":
            with self.blocker.unblock():
                stack.wait_for_heartbeat(self.workers[pool])
        else:
            stack.wait_for_ready(self.workers[pool])


def api_user(e2e_stack, username: str, codenames: list[str]) -> stack.Api:
    """A staff user holding the named permissions, with an API key, as an HTTP client."""
    from django.contrib.auth.models import Permission, User

    from accounts import services as accounts

    with e2e_stack.blocker.unblock():
        user, _ = User.objects.get_or_create(username=username, is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        key = accounts.create_api_key(user, "e2e")[1]
    return stack.Api(e2e_stack.alice.base_url, key)


@pytest.fixture(scope="module")
def decider(e2e_stack):
    """An operator who decides approvals (nobody decides a request they asked)."""
    return api_user(e2e_stack, "e2e-dora", ["decide_approvalrequest"])


class SecondHost:
    """A second KVM host on this machine (`stack.second_host()`: its own name, queues, port
    range, sandbox directory, tmux server, terminal and egress directories; the same
    libvirtd, database, Redis and web server): its three worker pools and its egress proxy,
    with the e2e stack's settings."""

    def __init__(self, e2e_stack, resources: stack.HostResources):
        self.resources = resources
        self.name = resources.name
        self.blocker = e2e_stack.blocker
        self.env = {**e2e_stack.env, **resources.env()}
        self.workers: dict[str, stack.Proc] = {}
        self.egress = stack.egress_proxy(**self.env)

    def start(self) -> None:
        self.egress.start()
        self.start_workers()
        stack.wait_for_socket(
            self.egress, str(Path(self.resources.egress_dir, f"{self.name}.sock"))
        )

    def start_workers(self) -> None:
        """Start the host's pools and wait until they are up (the lifecycle pool's start also
        recovers its host's work and has the host reconciled)."""
        self.workers = stack.start_pools(**self.env)
        stack.wait_for_pools(self.blocker, self.workers, host_name=self.name)

    def ensure_workers(self) -> None:
        """Its pools again, if a test left any of them dead."""
        if any(proc.popen.poll() is not None for proc in self.workers.values()):
            for proc in self.workers.values():
                proc.stop()
            self.start_workers()

    def kill_workers(self) -> None:
        """SIGKILL every worker pool of the host, as when its machine dies: no heartbeat from
        now on, nothing consumes its queues. Its guests (libvirtd's children) keep running."""
        for proc in self.workers.values():
            proc.kill(signal.SIGKILL)

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.egress]:
            proc.stop()


@pytest.fixture(scope="module")
def second_host(e2e_stack):
    """A second KVM host beside the e2e stack's (SecondHost), for the module; its domains
    are destroyed after it, and a test that left any fails."""
    host = SecondHost(e2e_stack, stack.second_host())
    sweep_test_domains(host.resources.sandbox_dir)
    shutil.rmtree(host.resources.sandbox_dir, ignore_errors=True)
    try:
        host.start()
        yield host
    finally:
        host.stop()
        leftovers = sweep_test_domains(host.resources.sandbox_dir)
        assert not leftovers, f"test left domains behind on {host.name}: {leftovers}"
