"""Fixtures of the sandboxes tests."""

from __future__ import annotations

import pytest

from sandboxes import runtime


@pytest.fixture
def driver(settings):
    """The fake hypervisor driver, fresh for the test, that the tasks run against."""
    settings.VSB = {**settings.VSB, "DRIVER": "fake"}
    runtime.reset_drivers()
    return runtime.get_driver()
