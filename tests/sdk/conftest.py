"""Fixtures of the SDK's end-to-end tests: the e2e ring's stack (a real worker with the
libvirt driver and a real daphne server, module-scoped), reused as it is."""

from tests.e2e.conftest import e2e_stack  # noqa: F401
