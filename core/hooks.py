"""What a lower app asks of a higher one without importing it (apps import only the apps
before them). The higher app fills each hook in its AppConfig.ready()."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Hook:
    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.__doc__ = doc
        self._impl: Callable | None = None

    def register(self, impl: Callable) -> None:
        self._impl = impl

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._impl is None:
            raise RuntimeError(f"hook {self.name} has no implementation: is its app installed?")
        return self._impl(*args, **kwargs)


visible_sandboxes = Hook(
    "visible_sandboxes",
    "visible_sandboxes(user): the queryset of the sandboxes `user` may see (its own, or all "
    "for staff); filled by the sandboxes app with sandboxes.services.visible_sandboxes.",
)

approval_decided = Hook(
    "approval_decided",
    "approval_decided(request): called inside the transaction that approved or denied an "
    "approval request; filled by the egress app (an approved egress request becomes a grant).",
)
