"""Synchronisation helpers for race tests: wait for the state a test needs, never a fixed sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class SpyLock:
    """Wraps a lock and sets ``contended`` once some thread has to wait for it.

    A race test can then wait until "the other thread is blocked on the lock" (the fix works) or "the
    other thread finished" (the fix is missing), instead of guessing with ``join(0.3)``."""

    def __init__(self, lock: Any | None = None) -> None:
        self._lock = lock if lock is not None else threading.Lock()
        self.contended = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        self.contended.set()
        return self._lock.acquire(True, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.005) -> bool:
    """Poll ``condition`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(interval)
    return True
