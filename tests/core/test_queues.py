"""Routing: each kind of work goes to a queue of its own per host (core/queues.py), so that a
slow kind never starves another; every task is sent through the one routing, and only the
names it makes are accepted."""

from __future__ import annotations

import pytest

from approvals import tasks as approval_tasks
from core import queues
from core.queues import Work
from playbooks import tasks as playbook_tasks
from sandboxes import tasks as sandbox_tasks
from sandboxes.management.commands.worker import worker_argv
from terminals import tasks as terminal_tasks


def test_each_kind_of_work_has_its_own_queue_per_host():
    assert queues.queue_for(Work.LIFECYCLE, "kvm-a") == "kvm.kvm-a"
    assert queues.queue_for(Work.COMMANDS, "kvm-a") == "kvm.kvm-a.commands"
    assert queues.queue_for(Work.TERMINALS, "kvm-a") == "kvm.kvm-a.terminals"
    assert queues.queue_for(Work.LIFECYCLE) == "control"
    assert queues.queue_for(Work.COMMANDS) == "control.commands"


def test_terminal_work_needs_a_host():
    with pytest.raises(ValueError, match="KVM host"):
        queues.queue_for(Work.TERMINALS)


TASKS_BY_WORK = {
    Work.LIFECYCLE: [
        sandbox_tasks.provision_sandbox,
        sandbox_tasks.wait_ready,
        sandbox_tasks.destroy_sandbox,
        sandbox_tasks.snapshot_sandbox,
        sandbox_tasks.reap_expired_sandboxes,
        approval_tasks.send_webhook,
    ],
    Work.COMMANDS: [
        sandbox_tasks.run_command,
        playbook_tasks.run_playbook,
        playbook_tasks.compute_diff,
        playbook_tasks.generate_playbook,
        playbook_tasks.verify_playbook,
    ],
    Work.TERMINALS: [terminal_tasks.host_op],
}


@pytest.mark.parametrize(
    "task, work", [(task, work) for work, tasks in TASKS_BY_WORK.items() for task in tasks]
)
def test_each_task_says_which_work_it_is(task, work):
    assert queues.work_of(task) == work


@pytest.mark.parametrize(
    "queue",
    ["control", "control.commands", "kvm.a", "kvm.kvm-2.commands", "kvm.kvm-2.terminals"],
)
def test_it_accepts_the_queues_the_routing_makes(queue):
    assert queues.check_queue(queue) == queue


@pytest.mark.parametrize(
    "queue",
    [
        "contrl",
        "control.terminals",
        "kvm.",
        "kvm.a.b",
        "kvm.a.command",
        "kvm.A",
        "kvm.a.terminals.x",
        "kvm.typo host",
        "celery",
    ],
)
def test_it_refuses_any_other_queue_name(queue):
    with pytest.raises(ValueError, match="unknown queue"):
        queues.check_queue(queue)


def test_it_sends_each_task_to_the_queue_of_its_work_on_the_named_host(
    db, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        queues.enqueue(sandbox_tasks.destroy_sandbox, "op-1", host="kvm-a")
        queues.enqueue(sandbox_tasks.run_command, "cmd-1", host="kvm-a")
        queues.enqueue(terminal_tasks.host_op, "req-1", "ls", {}, host="kvm-a")
        queues.enqueue(approval_tasks.send_webhook, "ask-1")
    assert sent_tasks == [
        ("sandboxes.destroy_sandbox", ["op-1"], "kvm.kvm-a"),
        ("sandboxes.run_command", ["cmd-1"], "kvm.kvm-a.commands"),
        ("terminals.host_op", ["req-1", "ls", {}], "kvm.kvm-a.terminals"),
        ("approvals.send_webhook", ["ask-1"], "control"),
    ]


def test_it_takes_no_queue_from_the_caller():
    with pytest.raises(TypeError, match="takes no queue"):
        queues.enqueue(sandbox_tasks.run_command, "cmd-1", host="kvm-a", queue="kvm.kvm-a")


def test_each_pool_consumes_its_own_queues_and_only_the_lifecycle_pool_runs_beat(settings):
    settings.VSB = {**settings.VSB, "WORKER_COMMANDS_THREADS": 40}
    lifecycle = worker_argv("lifecycle", "kvm-a", beat=True)
    assert lifecycle[lifecycle.index("-Q") + 1] == "kvm.kvm-a,control"
    assert "-B" in lifecycle
    commands = worker_argv("commands", "kvm-a")
    assert commands[commands.index("-Q") + 1] == "kvm.kvm-a.commands,control.commands"
    assert commands[commands.index("-c") + 1] == "40"
    terminals = worker_argv("terminals", "kvm-a")
    assert terminals[terminals.index("-Q") + 1] == "kvm.kvm-a.terminals"
    everything = worker_argv("all", "kvm-a")
    assert set(everything[everything.index("-Q") + 1].split(",")) == {
        "kvm.kvm-a",
        "control",
        "kvm.kvm-a.commands",
        "control.commands",
        "kvm.kvm-a.terminals",
    }
    with pytest.raises(Exception, match="only the lifecycle pool"):
        worker_argv("commands", "kvm-a", beat=True)
