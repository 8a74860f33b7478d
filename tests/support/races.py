"""Races on purpose: the same call from many threads released at the same moment."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection


def at_once(call: Callable[[], object], threads: int = 8) -> list[object]:
    """Run `call` in `threads` threads that start together (a barrier); each closes its own
    database connection. Returns what each call returned."""
    barrier = threading.Barrier(threads)
    results: list[object] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(call())
        finally:
            connection.close()

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return results
