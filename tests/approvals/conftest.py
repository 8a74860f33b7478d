from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from sandboxes import services


def grant(user, codename: str) -> None:
    user.user_permissions.add(Permission.objects.get(codename=codename))


def make_operator(django_user_model, username: str):
    """A person who may decide (the decide permission), using the API with a key."""
    user = django_user_model.objects.create_user(username=username)
    grant(user, "decide_approvalrequest")
    _, secret = services.create_api_key(user, "ops")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.user = user
    client.secret = secret
    return client


@pytest.fixture
def dora(db, django_user_model):
    """dora the decider."""
    return make_operator(django_user_model, "dora")


@pytest.fixture
def dan(db, django_user_model):
    """A second decider, racing dora."""
    return make_operator(django_user_model, "dan")
