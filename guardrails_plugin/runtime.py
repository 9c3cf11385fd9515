"""One background event loop for the library's sync API and the streaming monitors.

Sync callers (``guard.check_prompt`` from plain code, a sync LangChain callback) and the
ReasoningMonitor's off-token-path checks run their coroutines on this private loop thread, so they
never need an event loop of their own and never block the caller's. Async callers (``acheck_*``)
run checks on their own loop instead: engines are loop-agnostic, and skipping the thread hop saves a
GIL hand-off per check under load.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """A daemon thread running an asyncio loop; submit coroutines from anywhere."""

    def __init__(self, name: str = "guardrails-plugin-loop"):
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        loop.run_forever()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait (for sync callers)."""
        if self.in_loop():
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop; await the coroutine instead")
        return self.submit(coro).result(timeout)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop thread from any event loop."""
        if self.in_loop():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def stop(self) -> None:
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)


_default: LoopThread | None = None
_lock = threading.Lock()


def default_loop() -> LoopThread:
    """The process-wide engine loop, started on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = LoopThread()
            atexit.register(_default.stop)
        return _default


def we_are_cancelled() -> bool:
    """True when the running task itself is being cancelled (so CancelledError must propagate).
    Python 3.10 cannot tell; there every CancelledError propagates."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return task is None or cancelling is None or cancelling() > 0
