"""The lifecycle table and its compare-and-set transition."""

from __future__ import annotations

import pytest

from sandboxes import lifecycle
from sandboxes.choices import SandboxState as S
from sandboxes.models import Sandbox
from tests.support.races import at_once


@pytest.fixture
def sandbox(db, host, source, django_user_model):
    owner = django_user_model.objects.create_user("lena")
    return Sandbox.objects.create(
        name="sbx-life0001", owner=owner, host=host, source=source, agent_id="x"
    )


def test_it_moves_along_an_allowed_edge_and_stamps_the_time(sandbox):
    before = sandbox.state_changed_at
    assert lifecycle.transition(sandbox.pk, S.PROVISIONING)
    sandbox.refresh_from_db()
    assert sandbox.state == S.PROVISIONING
    assert sandbox.state_changed_at > before


def test_it_refuses_a_move_from_an_unexpected_state(sandbox):
    assert not lifecycle.transition(sandbox.pk, S.READY)  # requested cannot become ready
    sandbox.refresh_from_db()
    assert sandbox.state == S.REQUESTED


def test_it_raises_for_an_expected_state_that_can_never_reach_the_target(sandbox):
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.transition(sandbox.pk, S.READY, expected=[S.DESTROYED])


def test_it_never_leaves_destroyed(sandbox):
    Sandbox.objects.filter(pk=sandbox.pk).update(state=S.DESTROYED)
    for target in S.values:
        if target != S.DESTROYED:
            assert not lifecycle.transition(sandbox.pk, target)


def test_it_records_the_error_reason_and_clears_it_on_recovery(sandbox):
    assert lifecycle.transition(sandbox.pk, S.ERROR, error="disk full")
    sandbox.refresh_from_db()
    assert sandbox.error == "disk full"
    assert lifecycle.transition(sandbox.pk, S.DESTROYING)
    sandbox.refresh_from_db()
    assert sandbox.error == ""


@pytest.mark.django_db(transaction=True)
def test_it_lets_exactly_one_of_many_concurrent_callers_win(host, source, django_user_model):
    owner = django_user_model.objects.create_user("race")
    sandbox = Sandbox.objects.create(
        name="sbx-race0001", owner=owner, host=host, source=source, agent_id="x"
    )
    wins = at_once(lambda: lifecycle.transition(sandbox.pk, S.DESTROYING))
    assert wins.count(True) == 1
