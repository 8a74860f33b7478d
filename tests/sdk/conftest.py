"""Fixtures of the SDK's tests: the e2e ring's stack (a real worker with the libvirt driver
and a real daphne server, module-scoped), reused as it is; and quick polls for the unit ring."""

import pytest
from virsh_sandbox import _api

from tests.e2e.conftest import e2e_stack  # noqa: F401


@pytest.fixture
def quick_polls(monkeypatch):
    """The SDK's waits poll every 10 ms at first instead of 200 ms."""
    monkeypatch.setattr(_api, "POLL_FIRST", 0.01)
