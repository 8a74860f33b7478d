from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from tests.conftest import make_agent


def grant(user, codename: str) -> None:
    user.user_permissions.add(Permission.objects.get(codename=codename))


def make_operator(django_user_model, username: str):
    """A person who may decide (the decide permission), using the API with a key."""
    client = make_agent(django_user_model, username, key_name="ops")
    grant(client.user, "decide_approvalrequest")
    return client


def operator_fixture(username: str, doc: str):
    def operator(db, django_user_model):
        return make_operator(django_user_model, username)

    operator.__doc__ = doc
    return pytest.fixture(operator, name=username)


dora = operator_fixture("dora", "dora the decider.")
dan = operator_fixture("dan", "A second decider, racing dora.")
