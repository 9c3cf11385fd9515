"""The circuit breaker's state machine on a fake clock: closed -> open after the failure threshold,
half-open probes after the reset timeout, one probe at a time, and recovery. The breaker in front of
a misbehaving HTTP server is in test_faults.py."""

from __future__ import annotations

import asyncio
import threading

import pytest

from guardrails_plugin import FailureKind
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.engines.breaker import BreakerEngine, CircuitBreaker, CircuitState
from guardrails_plugin.errors import GuardEngineError, ScoringUnsupported


# ------------------------------------------------------------------------------ state machine
class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_state_machine_with_fake_clock() -> None:
    clock = FakeClock()
    changes: list[tuple[str, str]] = []
    br = CircuitBreaker("e", failure_threshold=3, reset_timeout_s=10, clock=clock)
    br.listeners.append(lambda b, old, new: changes.append((str(old), str(new))))
    for _ in range(2):
        assert br.acquire() is False
        br.failure(False, "x")
    br.acquire()
    br.success(False)  # a success resets the consecutive count
    for _ in range(3):
        br.acquire()
        br.failure(False, "boom")
    assert br.state is CircuitState.OPEN and changes == [("closed", "open")]
    with pytest.raises(GuardEngineError) as ei:
        br.acquire()
    assert ei.value.kind is FailureKind.CIRCUIT_OPEN and "boom" in str(ei.value) and "next probe in 10.0s" in str(ei.value)
    clock.t += 9.9
    with pytest.raises(GuardEngineError):
        br.acquire()
    clock.t += 0.1
    assert br.state is CircuitState.HALF_OPEN
    assert br.acquire() is True  # the probe
    with pytest.raises(GuardEngineError, match="probe in flight"):
        br.acquire()
    br.release(True)  # caller cancelled: no verdict on the engine, slot freed
    assert br.acquire() is True
    br.success(True)
    assert br.state is CircuitState.CLOSED
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert br.stats["opened"] == 1 and br.stats["rejected"] == 3


async def test_breaker_engine_cancel_before_deadline_is_not_a_failure() -> None:
    gate = threading.Event()

    class Hanging:
        name = "hang"

        async def generate(self, requests, *, timeout=None):
            await asyncio.sleep(10)
            gate.set()
            return []

        def render(self, r):
            return ""

        async def aclose(self):
            return None

    br = CircuitBreaker("hang", failure_threshold=1, reset_timeout_s=10)
    eng = BreakerEngine(Hanging(), br)
    task = asyncio.ensure_future(eng.generate([], timeout=5.0))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert br.state is CircuitState.CLOSED and br.stats["failures"] == 0
    # Cancelled at the deadline (the Guard's wait_for): counted.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(eng.generate([], timeout=0.1), 0.1)
    assert br.state is CircuitState.OPEN


async def test_breaker_engine_counts_score_failures_but_not_missing_scoring() -> None:
    class Scorer:
        name = "scorer"
        fail = True

        async def generate(self, requests, *, timeout=None):
            return []

        async def score(self, requests, *, timeout=None):
            if self.fail:
                raise GuardEngineError("scoring server down")
            return ["ok"] * len(requests)

        def render(self, r):
            return ""

        async def aclose(self):
            return None

    br = CircuitBreaker("scorer", failure_threshold=2, reset_timeout_s=30)
    eng = BreakerEngine(Scorer(), br)
    for _ in range(2):
        with pytest.raises(GuardEngineError, match="scoring server down"):
            await eng.score([1])
    with pytest.raises(GuardEngineError) as ei:
        await eng.score([1])
    assert ei.value.kind is FailureKind.CIRCUIT_OPEN
    # An engine that cannot score says so (ScoringUnsupported) and that is no failure of it.
    quiet = CircuitBreaker("s", failure_threshold=1)
    for _ in range(3):
        with pytest.raises(ScoringUnsupported):
            await BreakerEngine(ScriptedEngine(["x"]), quiet).score([1])
    assert quiet.state is CircuitState.CLOSED and quiet.stats["failures"] == 0


def test_half_open_probe_slot_is_released_on_a_base_exception() -> None:
    # A probe ended by a BaseException that is not an Exception (KeyboardInterrupt, SystemExit)
    # used to keep its half-open slot forever: every later call was rejected as "probe in flight".
    class Interrupt(BaseException):
        pass

    class Inner:
        name = "inner"
        raise_it = True

        async def generate(self, requests, *, timeout=None):
            if self.raise_it:
                raise Interrupt()
            return ["ok"]

    now = [0.0]
    breaker = CircuitBreaker("inner", failure_threshold=1, reset_timeout_s=1.0, clock=lambda: now[0])
    breaker.failure(False, "boom")
    assert breaker.state is CircuitState.OPEN
    now[0] = 2.0  # cooled down: the next call is the probe
    inner = Inner()
    eng = BreakerEngine(inner, breaker)
    with pytest.raises(Interrupt):
        asyncio.run(eng.generate([]))
    inner.raise_it = False
    assert asyncio.run(eng.generate([])) == ["ok"]  # a new probe is let through and closes it
    assert breaker.state is CircuitState.CLOSED
