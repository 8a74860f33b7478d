"""Choosing a KVM host by its resources (sandboxes/capacity.py): among the enabled,
non-draining hosts with a live worker and room, the one with the most free memory (overcommit
ratio × its memory − the memory of its sandboxes that hold memory), ties by name; an optional
count cap; a full fleet is a 503 naming every host and its numbers; starting a stopped
sandbox needs room on its own host; a drained host takes nothing new. Tasks go to the chosen
host's own queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import Unavailable
from sandboxes import capacity, services
from sandboxes.choices import SandboxState
from sandboxes.models import Host, Sandbox

pytestmark = pytest.mark.django_db


def live_host(name: str, memory_mb: int | None = None, **kw) -> Host:
    """A host whose worker just beat, reporting `memory_mb` of memory (None: no report) and
    boot slots enough that no create here waits in the boot queue (test_admission.py)."""
    resources = {} if memory_mb is None else {"memory_total_mb": memory_mb}
    kw.setdefault("boot_slots", 16)
    return Host.objects.create(name=name, last_heartbeat=timezone.now(), resources=resources, **kw)


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("hana")


@pytest.fixture
def place(owner, source):
    """Put a sandbox row of `memory_mb` in `state` on a host (as if it had got there)."""
    count = iter(range(1000))

    def place(host: Host, state: str, memory_mb: int = 256) -> Sandbox:
        return Sandbox.objects.create(
            name=f"sbx-placed{next(count)}",
            owner=owner,
            host=host,
            source=source,
            state=state,
            memory_mb=memory_mb,
        )

    return place


def create(owner, memory_mb: int = 256, **kw):
    return services.create_sandbox(owner, source_vm_name="debian-base", memory_mb=memory_mb, **kw)


def test_it_places_each_create_on_the_host_with_the_most_free_memory_ties_by_name(
    source, owner, sent_tasks, django_capture_on_commit_callbacks
):
    live_host("kvm-b", memory_mb=768)
    live_host("kvm-a", memory_mb=1024)
    queues = []
    for _ in range(4):
        with django_capture_on_commit_callbacks(execute=True):
            queues.append(create(owner).queue)
    # free a/b: 1024/768 → a; 768/768 (tie) → a; 512/768 → b; 512/512 (tie) → a
    assert queues == ["kvm.kvm-a", "kvm.kvm-a", "kvm.kvm-b", "kvm.kvm-a"]
    assert [queue for _, _, queue in sent_tasks] == queues


def test_committed_memory_counts_only_sandboxes_that_hold_memory(source, owner, place, sent_tasks):
    host = live_host("kvm-a", memory_mb=1024)
    for state in (SandboxState.STOPPED, SandboxState.ERROR, SandboxState.DESTROYED):
        place(host, state, memory_mb=512)
    place(host, SandboxState.READY, memory_mb=256)
    place(host, SandboxState.REQUESTED, memory_mb=256)
    assert services.rooms([host])[host.pk].committed_mb == 512
    assert create(owner, memory_mb=512).sandbox.host == host  # 512 + 512 = 1024: fits exactly
    with pytest.raises(Unavailable, match="kvm-a is full: 1024 MiB committed"):
        create(owner, memory_mb=128)


def test_the_memory_rule_is_one_set_of_states_that_free_it():
    # Queued and paused sandboxes hold (or are about to hold) memory; hibernated has it on disk.
    holding = {s for s in SandboxState.values if capacity.holds_memory(s)}
    assert holding == set(SandboxState.values) - {"stopped", "destroyed", "error", "hibernated"}
    assert capacity.holds_memory("queued") and capacity.holds_memory("paused")
    assert not capacity.holds_memory("hibernated")


def test_the_overcommit_ratio_comes_from_the_setting_unless_the_host_sets_its_own(
    source, owner, place, settings, sent_tasks
):
    settings.VSB = {**settings.VSB, "MEMORY_OVERCOMMIT": 1.5}
    roomy = live_host("roomy", memory_mb=1000)
    strict = live_host("strict", memory_mb=1000, memory_overcommit=0.5)
    room = services.rooms([roomy, strict])
    assert (room[roomy.pk].limit_mb, room[strict.pk].limit_mb) == (1500, 500)
    place(roomy, SandboxState.READY, memory_mb=1024)
    # roomy has 476 MiB free, strict 500: strict is preferred.
    assert create(owner, memory_mb=400).sandbox.host == strict
    with pytest.raises(Unavailable) as refused:
        create(owner, memory_mb=500)
    assert "limit of 500 MiB (0.5 × 1000 MiB); 100 MiB free" in refused.value.message
    assert "limit of 1500 MiB (1.5 × 1000 MiB); 476 MiB free" in refused.value.message


def test_a_count_cap_limits_the_sandboxes_holding_memory_and_blank_means_none(
    source, owner, place, sent_tasks
):
    host = live_host("kvm-a", memory_mb=100_000, capacity=2)
    place(host, SandboxState.STOPPED)  # holds no memory: not counted
    place(host, SandboxState.READY)
    create(owner)
    with pytest.raises(Unavailable, match="kvm-a is full: 2 of its 2 sandboxes"):
        create(owner)
    host.capacity = None
    services.save_host(host)
    assert create(owner).sandbox.host == host


def test_a_host_that_has_not_reported_its_memory_has_only_its_count_cap_and_comes_last(
    source, owner, sent_tasks
):
    live_host("unreported", capacity=1)
    live_host("reported", memory_mb=512)
    hosts = [create(owner).sandbox.host.name for _ in range(3)]
    assert hosts == ["reported", "reported", "unreported"]
    with pytest.raises(Unavailable, match="unreported is full: 1 of its 1 sandboxes"):
        create(owner)


def test_it_skips_hosts_without_a_recent_heartbeat(source, owner, sent_tasks):
    Host.objects.create(
        name="silent",
        last_heartbeat=timezone.now() - timedelta(minutes=5),
        resources={"memory_total_mb": 100_000},
    )
    live_host("alive", memory_mb=1024)
    assert create(owner).sandbox.host.name == "alive"


def test_a_full_fleet_names_each_host_and_its_numbers(source, owner, place, sent_tasks):
    a = live_host("kvm-a", memory_mb=1024)
    b = live_host("kvm-b", memory_mb=100_000, capacity=1)
    place(a, SandboxState.READY, memory_mb=768)
    place(b, SandboxState.READY)
    with pytest.raises(Unavailable) as refused:
        create(owner, memory_mb=512)
    assert refused.value.code == "capacity"
    assert refused.value.message == (
        "No host has room for a sandbox of 512 MiB: kvm-a is full: 768 MiB committed + 512 "
        "MiB would pass its limit of 1024 MiB (1 × 1024 MiB); 256 MiB free; kvm-b is full: "
        "1 of its 1 sandboxes (count cap). Destroy or stop sandboxes, or ask an operator for "
        "room."
    )
    assert Sandbox.objects.filter(state=SandboxState.REQUESTED).count() == 0


def test_a_full_fleet_is_a_503_over_the_api(alice, source, place, sent_tasks):
    host = live_host("kvm-a", memory_mb=1024)
    place(host, SandboxState.READY, memory_mb=1024)
    response = alice.post("/v1/sandboxes", {"source_vm_name": "debian-base"}, format="json")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "capacity"
    assert "kvm-a is full: 1024 MiB committed + 256 MiB" in error["message"]


def test_starting_a_stopped_sandbox_needs_room_on_its_own_host(source, owner, place, sent_tasks):
    home = live_host("home", memory_mb=1024)
    live_host("elsewhere", memory_mb=100_000)  # room elsewhere does not help: disks stay
    stopped = place(home, SandboxState.STOPPED, memory_mb=512)
    other = place(home, SandboxState.READY, memory_mb=768)
    with pytest.raises(Unavailable, match="cannot start now: home is full: 768 MiB committed"):
        services.start_sandbox(stopped, owner)
    stopped.refresh_from_db()
    assert stopped.state == SandboxState.STOPPED
    services.set_sandbox_fields(other.pk, state=SandboxState.STOPPED)
    assert services.start_sandbox(stopped, owner).kind == "start"
    stopped.refresh_from_db()
    assert stopped.state == SandboxState.BOOTING


def test_a_draining_host_takes_no_new_sandbox_while_its_own_keep_working(
    source, owner, place, sent_tasks
):
    drained = live_host("drained", memory_mb=100_000)
    live_host("open", memory_mb=1024)
    stopped = place(drained, SandboxState.STOPPED)
    services.set_draining(drained, owner, True)
    assert create(owner).sandbox.host.name == "open"
    # Its own sandboxes keep working: a stopped one starts there.
    services.start_sandbox(stopped, owner)
    stopped.refresh_from_db()
    assert (stopped.state, stopped.host) == (SandboxState.BOOTING, drained)


def test_when_every_host_drains_a_create_is_refused_saying_so(source, owner, sent_tasks):
    a = live_host("kvm-a", memory_mb=1024)
    b = live_host("kvm-b", memory_mb=1024)
    for host in (a, b):
        services.set_draining(host, owner, True)
    with pytest.raises(Unavailable) as refused:
        create(owner)
    assert refused.value.code == "draining"
    assert "Hosts kvm-a, kvm-b are draining" in refused.value.message


def test_a_fork_stays_on_its_origins_host_and_is_refused_while_it_drains(
    source, owner, place, sent_tasks
):
    from sandboxes.models import Snapshot

    home = live_host("home", memory_mb=1024)
    live_host("bigger", memory_mb=100_000)
    origin = place(home, SandboxState.READY)
    Snapshot.objects.create(sandbox=origin, name="s1", status="ready")
    fork = dict(from_sandbox=origin.pk, from_snapshot="s1")
    assert services.create_sandbox(owner, **fork).sandbox.host == home
    services.set_draining(home, owner, True)
    with pytest.raises(
        Unavailable, match="Host home is draining: .*a fork lives on its origin's host"
    ):
        services.create_sandbox(owner, **fork)


def test_it_keeps_a_source_bound_to_its_host(source, owner, sent_tasks):
    live_host("other", memory_mb=100_000)
    home = live_host("home", memory_mb=1024)
    source.host = home
    source.save(update_fields=["host"])
    for _ in range(2):
        assert create(owner).sandbox.host == home


def test_it_gives_each_live_sandbox_its_own_port_per_host(source, owner, sent_tasks):
    live_host("kvm-a", memory_mb=100_000)
    ports = {create(owner).sandbox.ssh_port for _ in range(5)}
    assert len(ports) == 5


def test_a_restore_that_runs_the_sandbox_again_needs_room_a_disk_only_one_does_not(
    source, owner, place, sent_tasks
):
    from sandboxes.models import Snapshot

    home = live_host("home", memory_mb=1024)
    stopped = place(home, SandboxState.STOPPED, memory_mb=512)
    place(home, SandboxState.READY, memory_mb=768)
    Snapshot.objects.create(sandbox=stopped, name="mem", status="ready", has_memory=True)
    Snapshot.objects.create(sandbox=stopped, name="disk", status="ready", has_memory=False)
    with pytest.raises(Unavailable, match="cannot start now: home is full"):
        services.restore_snapshot(stopped, owner, "mem")
    assert services.restore_snapshot(stopped, owner, "disk").kind == "restore"


def test_the_reconcile_adopts_a_sandbox_found_running_whatever_the_room(
    source, owner, place, sent_tasks
):
    home = live_host("home", memory_mb=1024)
    place(home, SandboxState.READY, memory_mb=1024)
    started_behind_our_back = place(home, SandboxState.STOPPED)
    op = services.adopt_running_sandbox(started_behind_our_back, "its domain runs")
    assert op is not None and op.kind == "start"
