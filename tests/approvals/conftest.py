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


@pytest.fixture
def dora(db, django_user_model):
    """dora the decider."""
    return make_operator(django_user_model, "dora")


@pytest.fixture
def dan(db, django_user_model):
    """A second decider, racing dora."""
    return make_operator(django_user_model, "dan")
