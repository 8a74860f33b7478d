"""manage.py create_agent: what scripts/run.sh uses to print the quick-start key."""

from io import StringIO

import pytest
from django.core.management import call_command

from accounts import services

pytestmark = pytest.mark.django_db


def create_agent(*args: str) -> str:
    out = StringIO()
    call_command("create_agent", *args, stdout=out)
    return out.getvalue().strip()


def test_it_creates_the_agent_and_prints_a_key_that_authenticates_it():
    secret = create_agent("demo-agent", "--key-name", "quickstart")
    user = services.authenticate_api_key(secret)
    assert user is not None and user.username == "demo-agent"
    assert not user.has_usable_password()


def test_it_revokes_the_earlier_key_of_that_name_when_asked():
    first = create_agent("demo-agent", "--key-name", "quickstart")
    second = create_agent("demo-agent", "--key-name", "quickstart", "--revoke-others")
    assert services.authenticate_api_key(first) is None
    assert services.authenticate_api_key(second).username == "demo-agent"
