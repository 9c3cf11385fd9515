"""Circuit breaker per engine: stop hammering a guard server that is down, probe for recovery.

States::

    closed --(failure_threshold consecutive failures)--> open
    open   --(reset_timeout_s elapsed, next call)-------> half_open (that call is the probe)
    half_open --probe succeeds--> closed     half_open --probe fails--> open (cool-down restarts)

While open (and while a half-open probe is in flight) calls fail at once with
``GuardEngineError(kind=FailureKind.CIRCUIT_OPEN)``, which the runner records as that failure kind
and the policy turns into the stage's fail mode: a dead engine costs microseconds per check instead of a full deadline.

What counts as a failure: any engine error or timeout (``GuardEngineError``, ``asyncio.TimeoutError``,
any other exception from ``generate``) and a cancellation that arrives at the call's deadline (the
Guard's ``wait_for`` cancelling a stuck engine). A cancellation before the deadline (the caller gave
up, e.g. a monitor closing) is not the engine's fault and counts as nothing. An unparseable but
delivered completion is a success: the engine works, the guard answered badly. An engine that
cannot fast-score (ScoringUnsupported) says nothing about its health either.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import FailureKind, GuardEngineError, ScoringUnsupported
from .base import Engine, GenerationRequest, ScoreRequest, ScoreResult, SessionKey, as_engine


class CircuitState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


#: numeric codes for the Prometheus gauge (documented in docs/observability.md)
STATE_CODES = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


class CircuitConfig(BaseModel):
    """Circuit-breaker settings (``GuardConfig.circuit``), one breaker per engine."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    failure_threshold: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    reset_timeout_s: float = Field(
        10.0, gt=0, description="Cool-down before a half-open probe is let through."
    )
    half_open_max_calls: int = Field(1, ge=1, description="Concurrent probes allowed when half-open.")


class CircuitBreaker:
    """Thread-safe breaker state machine. ``clock`` is injectable for tests."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout_s: float = 10.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        if failure_threshold < 1 or reset_timeout_s <= 0 or half_open_max_calls < 1:
            raise ValueError("need failure_threshold >= 1, reset_timeout_s > 0, half_open_max_calls >= 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failures = 0  # consecutive
        self._opened_at = 0.0
        self._probes = 0  # half-open calls in flight
        self.last_error: str | None = None
        #: counters: calls let through, rejected (fast-failed), failures, successes, opened (transitions to open)
        self.stats: dict[str, int] = {
            "calls": 0, "rejected": 0, "failures": 0, "successes": 0, "opened": 0
        }
        #: called with (breaker, old_state, new_state) on every transition (metrics, logs)
        self.listeners: list[Callable[[CircuitBreaker, CircuitState, CircuitState], None]] = []

    @classmethod
    def from_config(cls, name: str, cfg: CircuitConfig, **kw: Any) -> CircuitBreaker:
        return cls(
            name,
            failure_threshold=cfg.failure_threshold,
            reset_timeout_s=cfg.reset_timeout_s,
            half_open_max_calls=cfg.half_open_max_calls,
            **kw,
        )

    # -- state ----------------------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state; an open circuit whose cool-down has passed reads as half-open."""
        with self._lock:
            if self._state is CircuitState.OPEN and self._cooled_down():
                return CircuitState.HALF_OPEN
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_in_s(self) -> float:
        """Seconds until a probe will be let through (0 when not open)."""
        with self._lock:
            if self._state is not CircuitState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.reset_timeout_s - self._clock())

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.reset_timeout_s

    def _set(self, new: CircuitState) -> tuple[CircuitState, CircuitState] | None:
        old = self._state
        if old is new:
            return None
        self._state = new
        if new is CircuitState.OPEN:
            self._opened_at = self._clock()
            self.stats["opened"] += 1
        return old, new

    def _notify(self, change: tuple[CircuitState, CircuitState] | None) -> None:
        if change is None:
            return
        for fn in list(self.listeners):
            try:
                fn(self, *change)
            except Exception:  # an observer must never break the breaker
                pass

    # -- protocol: acquire -> (success | failure | release) ---------------------------------------
    def acquire(self) -> bool:
        """Let a call through or raise ``GuardEngineError(kind=CIRCUIT_OPEN)``. Returns True when
        the call is a half-open probe (the caller must then report its outcome)."""
        change = None
        with self._lock:
            if self._state is CircuitState.OPEN and self._cooled_down():
                change = self._set(CircuitState.HALF_OPEN)
            state = self._state
            if state is CircuitState.CLOSED:
                self.stats["calls"] += 1
                probe = False
            elif state is CircuitState.HALF_OPEN and self._probes < self.half_open_max_calls:
                self._probes += 1
                self.stats["calls"] += 1
                probe = True
            else:
                self.stats["rejected"] += 1
                retry = max(0.0, self._opened_at + self.reset_timeout_s - self._clock())
                msg = (
                    f"circuit open for {self.name}: {self._failures} consecutive failures"
                    + (f" (last: {self.last_error})" if self.last_error else "")
                    + (f"; next probe in {retry:.1f}s" if state is CircuitState.OPEN else "; probe in flight")
                )
                err = GuardEngineError(msg, kind=FailureKind.CIRCUIT_OPEN)
                probe = None
        self._notify(change)
        if probe is None:
            raise err
        return probe

    def success(self, probe: bool) -> None:
        with self._lock:
            self.stats["successes"] += 1
            if probe:
                self._probes = max(0, self._probes - 1)
            self._failures = 0
            self.last_error = None
            # Any success proves the engine answers: close (a late success while open too).
            change = self._set(CircuitState.CLOSED)
        self._notify(change)

    def failure(self, probe: bool, error: str = "") -> None:
        with self._lock:
            self.stats["failures"] += 1
            self._failures += 1
            self.last_error = error[:200] or None
            change = None
            if probe:
                self._probes = max(0, self._probes - 1)
                change = self._set(CircuitState.OPEN)
                self._opened_at = self._clock()  # a failed probe restarts the cool-down
            elif self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold:
                change = self._set(CircuitState.OPEN)
        self._notify(change)

    def release(self, probe: bool) -> None:
        """The call ended without telling us anything about the engine (caller cancelled)."""
        if probe:
            with self._lock:
                self._probes = max(0, self._probes - 1)

    def reset(self) -> None:
        """Force the circuit closed (operator action, tests)."""
        with self._lock:
            self._failures = 0
            self._probes = 0
            self.last_error = None
            change = self._set(CircuitState.CLOSED)
        self._notify(change)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state}, failures={self._failures})"


class BreakerEngine:
    """An Engine whose engine calls (``generate``, ``score``) go through a CircuitBreaker. The
    rest of ``Engine`` and any extras (tokenize, stats, calls, ...) are the wrapped engine's,
    which stays reachable as ``.inner``."""

    def __init__(self, inner: Any, breaker: CircuitBreaker):
        self.inner = inner
        self._engine: Engine = as_engine(inner)
        self.breaker = breaker
        self.name = self._engine.name

    def __getattr__(self, item: str) -> Any:  # only called for names not found on self
        if item in ("inner", "_engine"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(item)
        return getattr(self.inner, item)

    def __repr__(self) -> str:
        return f"BreakerEngine({self.inner!r}, state={self.breaker.state})"

    def render(self, request: GenerationRequest) -> str:
        return self._engine.render(request)

    async def generate(
        self, requests: Sequence[GenerationRequest], *, timeout: float | None = None
    ) -> list[str]:
        return await self._call(self._engine.generate, requests, timeout)

    async def score(self, requests: Sequence[ScoreRequest], *, timeout: float | None = None) -> list[ScoreResult]:
        return await self._call(self._engine.score, requests, timeout)

    def session_ids(self) -> list[SessionKey]:
        return self._engine.session_ids()

    def release_session(self, key: SessionKey) -> bool:
        return self._engine.release_session(key)

    async def _call(self, fn: Callable[..., Any], requests: Sequence[Any], timeout: float | None) -> Any:
        probe = self.breaker.acquire()
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            out = await fn(requests, timeout=timeout)
        except asyncio.CancelledError:
            # Cancelled at (or past) the deadline: the engine is stuck, count it. Earlier: the
            # caller gave up; say nothing about the engine.
            if timeout is not None and loop.time() - start >= timeout * 0.95:
                self.breaker.failure(probe, f"no completion within {timeout:.2f}s (cancelled)")
            else:
                self.breaker.release(probe)
            raise
        except ScoringUnsupported:  # a capability, not a failure
            self.breaker.release(probe)
            raise
        except GuardEngineError as exc:
            if exc.kind is FailureKind.CIRCUIT_OPEN:  # a nested breaker refused: not this engine's failure
                self.breaker.release(probe)
            else:
                self.breaker.failure(probe, str(exc))
            raise
        except Exception as exc:  # any engine bug is an engine failure
            self.breaker.failure(probe, repr(exc))
            raise
        except BaseException:  # KeyboardInterrupt, SystemExit, ...: says nothing about the engine,
            self.breaker.release(probe)  # but a half-open probe slot must not leak (stuck open)
            raise
        self.breaker.success(probe)
        return out

    async def aclose(self) -> None:
        await self._engine.aclose()


__all__ = ["STATE_CODES", "BreakerEngine", "CircuitBreaker", "CircuitConfig", "CircuitState"]
