"""ScriptedEngine: canned guard completions. A test double, not a guard.

Use it for tests and demos of policy and integrations only: it judges nothing. It returns strings
you give it (a list consumed in order, cycling) or whatever a callable returns for the rendered
prompt. An exception raised by the callable is an engine failure, exactly as a crashed model server
would be; ``latency_s`` simulates the guard's time to answer.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Sequence

from ..errors import GuardEngineError
from .base import GenerationRequest, render_plain

Responder = Callable[[str], str]


class ScriptedEngine:
    """Returns canned completions; for tests and demos only."""

    def __init__(
        self,
        responder: Sequence[str] | Responder,
        *,
        latency_s: float = 0.0,
        name: str = "scripted",
    ):
        if callable(responder):
            self._fn: Responder = responder
        else:
            items = list(responder)
            if not items:
                raise ValueError("ScriptedEngine needs at least one canned completion")
            cycle = itertools.cycle(items)
            lock = threading.Lock()

            def _next(_: str) -> str:
                with lock:
                    return next(cycle)

            self._fn = _next
        self.latency_s = latency_s
        self.name = name
        self.calls = 0  #: number of generate() calls
        self.prompts: list[str] = []  #: every rendered prompt seen, in order

    def render(self, request: GenerationRequest) -> str:
        return render_plain(request)

    async def generate(
        self, requests: Sequence[GenerationRequest], *, timeout: float | None = None
    ) -> list[str]:
        self.calls += 1
        rendered = [self.render(r) for r in requests]
        self.prompts.extend(rendered)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        out: list[str] = []
        for text in rendered:
            try:
                completion = self._fn(text)
            except GuardEngineError:
                raise
            except Exception as exc:  # a responder that raises stands for a crashed engine
                raise GuardEngineError(f"scripted responder raised {exc!r}") from exc
            if not isinstance(completion, str):
                raise GuardEngineError(f"scripted responder returned {type(completion).__name__}")
            out.append(completion)
        return out

    async def aclose(self) -> None:
        return None
