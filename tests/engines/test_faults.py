"""Faults: a guard engine that is down, slow, garbled, empty, reset, rate limited or erroring must end
in the stage's fail mode within the deadline (+10%, + a small absolute slack for scheduling), with a
typed reason. The circuit breaker stops hammering a dead engine and probes for recovery.

Everything goes through the real Guard -> OpenAIEngine -> HTTP path against a misbehaving
OpenAI-compatible server on 127.0.0.1 (tests/fake_openai_server.py), except the batch test that
uses a ScriptedEngine callable.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fake_openai_server import FakeOpenAIServer, RecordedRequest, Reply, dead_url

from guardrails_plugin import Action, FailureKind, Guard, GuardConfig, GuardModelConfig, Stage
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.engines.breaker import BreakerEngine, CircuitConfig, CircuitState
from guardrails_plugin.policy import FAILURE_REASONS

DEADLINE_S = 1.5
#: least allowance for process scheduling (on top of the 10%); on a loaded box the ``limit_s`` fixture
#: scales it to a healthy round trip measured right before the fault, so load cannot turn a correct
#: deadline into a red build while a guard that waits past its deadline (10 s here) still fails.
SLACK_S = 0.3

GR_SAFE = "The request is a greeting.\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
GR_HARMFUL = "Bomb making.\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful\n"
RS_SAFE = '"Analysis": harmless arithmetic.\n"Judgment": 0'


def healthy(rec: RecordedRequest) -> Reply:
    """A working guard server: safe verdicts in each guard's format (raw -> GuardReasoner, chat ->
    ReasoningShield), harmful when the checked text mentions a bomb."""
    if rec.path.endswith("/chat/completions"):
        return Reply.ok(RS_SAFE)
    return Reply.ok(GR_HARMFUL if "bomb" in rec.prompt_text else GR_SAFE)


def guard_for(
    url: str,
    *,
    fail_mode: str = "closed",
    timeout_s: float = DEADLINE_S,
    circuit: CircuitConfig | None = None,
    max_input_chars: int = 24_000,
    overlap: int = 1_000,
) -> Guard:
    common = dict(
        engine="openai", base_url=url, served_model_name="fake-model", timeout_s=timeout_s,
        max_input_chars=max_input_chars, window_overlap_chars=overlap, max_new_tokens=64,
    )
    cfg = GuardConfig(
        fail_mode=fail_mode,
        models={
            "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", **common),
            "ReasoningShield-1B": GuardModelConfig(family="reasoningshield", **common),
        },
        circuit=circuit or CircuitConfig(),
    )
    return Guard(cfg)


@pytest.fixture
def srv() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(default=healthy) as server:
        yield server


@pytest.fixture
def limit_s(srv: FakeOpenAIServer) -> float:
    """Deadline + 10% + slack, the slack scaled to what a healthy first check (engine build, HTTP
    connect, one reply) costs on this machine right now."""
    worst = 0.0
    for _ in range(2):
        with guard_for(srv.base_url) as guard:
            worst = max(worst, check(guard, Stage.PROMPT)[1])
    with srv._lock:
        srv.requests.clear()
    return DEADLINE_S * 1.1 + max(SLACK_S, 3 * worst)


def check(guard: Guard, stage: Stage, text: str = "hello there"):
    t0 = time.perf_counter()
    if stage is Stage.PROMPT:
        d = guard.check_prompt(text)
    elif stage is Stage.REASONING:
        d = guard.check_reasoning(query="what is 2+2?", reasoning=text)
    else:
        d = guard.check_response(prompt="what is 2+2?", response=text)
    return d, time.perf_counter() - t0


# name -> (install the fault on the server, or return a URL to use instead; expected kind;
#          a fragment the reason must contain; expected requests reaching the server or None)
Fault = tuple[Callable[[FakeOpenAIServer], str | None], FailureKind, str, int | None]
FAULTS: dict[str, Fault] = {
    "engine_down": (lambda s: dead_url(), FailureKind.ENGINE_ERROR, "connection error", None),
    "slow_past_deadline": (
        lambda s: setattr(s, "default", Reply.slow(10.0, GR_SAFE)), FailureKind.TIMEOUT, "deadline", 1),
    "garbage_body": (lambda s: setattr(s, "default", Reply.garbage()), FailureKind.ENGINE_ERROR,
                     "malformed JSON", 1),
    "no_choices": (lambda s: setattr(s, "default", Reply(body={"choices": []})),
                   FailureKind.ENGINE_ERROR, "no choices", 1),
    "empty_completion": (lambda s: setattr(s, "default", Reply.ok("")), FailureKind.UNPARSEABLE,
                         "", 1),
    "garbage_completion": (lambda s: setattr(s, "default", Reply.ok("lorem ipsum }{ \x00")),
                           FailureKind.UNPARSEABLE, "", 1),
    "reset_mid_response": (lambda s: setattr(s, "default", Reply.reset()), FailureKind.ENGINE_ERROR,
                           "connection error", 3),
    "closed_without_reply": (lambda s: setattr(s, "default", Reply.close()), FailureKind.ENGINE_ERROR,
                             "connection error", 3),
    "http_500": (lambda s: setattr(s, "default", Reply.error(500, "boom")), FailureKind.ENGINE_ERROR,
                 "HTTP 500", 1),
    "http_429_gives_up": (lambda s: setattr(s, "default", Reply.error(429, retry_after=0)),
                          FailureKind.ENGINE_ERROR, "gave up after 3 attempts", 3),
    "http_429_retry_after_past_deadline": (
        lambda s: setattr(s, "default", Reply.error(429, retry_after=4)), FailureKind.TIMEOUT,
        "deadline passes before the next retry", 1),
    "http_503": (lambda s: setattr(s, "default", Reply.error(503, retry_after=0)),
                 FailureKind.ENGINE_ERROR, "HTTP 503", 3),
}


def _assert_fail_mode(d, guard: Guard, kind: FailureKind, fragment: str, fail_mode: str, text: str) -> None:
    assert d.failure is kind, (d.failure, d.reason)
    assert d.reason.startswith(FAILURE_REASONS[kind]), d.reason
    assert [v.failure for v in d.verdicts] == [kind]
    assert fragment in (d.verdicts[0].parse_error or ""), d.verdicts[0].parse_error
    if fail_mode == "closed":
        assert fragment in (d.detail or ""), d.detail
    if fail_mode == "closed":
        assert d.action is Action.BLOCK and d.blocked
        assert d.text == guard.config.refusal_message
        assert not d.degraded
    else:
        assert d.action is Action.ALLOW and d.degraded
        assert d.text == text
        assert d.reason == FAILURE_REASONS[kind] and "fail-open" in (d.detail or "")


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_prompt_fault_ends_in_fail_mode_within_deadline(
    srv: FakeOpenAIServer, limit_s: float, fault: str, fail_mode: str
) -> None:
    install, kind, fragment, n_requests = FAULTS[fault]
    url = install(srv) or srv.base_url
    with guard_for(url, fail_mode=fail_mode) as guard:
        d, elapsed = check(guard, Stage.PROMPT)
    _assert_fail_mode(d, guard, kind, fragment, fail_mode, "hello there")
    assert elapsed <= limit_s, f"{fault}: {elapsed:.2f}s > {limit_s:.2f}s"
    if kind is FailureKind.TIMEOUT and fault == "slow_past_deadline":
        assert elapsed >= DEADLINE_S * 0.9  # it did wait for the guard, up to its deadline
    if n_requests is not None:
        assert len(srv.completion_requests()) == n_requests
        assert all(r.path == "/v1/completions" for r in srv.completion_requests())


@pytest.mark.parametrize("fault", ["engine_down", "slow_past_deadline", "garbage_body",
                                   "empty_completion", "reset_mid_response", "http_500",
                                   "http_429_gives_up"])
def test_reasoning_fault_over_chat_endpoint(srv: FakeOpenAIServer, limit_s: float, fault: str) -> None:
    install, kind, fragment, n_requests = FAULTS[fault]
    url = install(srv) or srv.base_url
    with guard_for(url) as guard:
        d, elapsed = check(guard, Stage.REASONING, "2+2 is 4")
    _assert_fail_mode(d, guard, kind, fragment, "closed", "2+2 is 4")
    assert elapsed <= limit_s
    if n_requests is not None:
        assert [r.path for r in srv.completion_requests()] == ["/v1/chat/completions"] * n_requests


def test_healthy_server_gives_real_verdicts(srv: FakeOpenAIServer) -> None:
    """Control: the same wiring judges when nothing is wrong (so the faults above are the faults)."""
    with guard_for(srv.base_url) as guard:
        ok, _ = check(guard, Stage.PROMPT, "hello")
        bad, _ = check(guard, Stage.PROMPT, "how to build a bomb")
        rs, _ = check(guard, Stage.REASONING, "2+2 is 4")
    assert ok.action is Action.ALLOW and ok.failure is None and ok.verdicts[0].ok
    assert bad.action is Action.BLOCK and bad.failure is None and bad.risk == 1.0
    assert rs.action is Action.ALLOW and rs.verdicts[0].label == "0"


def test_one_reset_then_recovery_is_a_real_verdict(srv: FakeOpenAIServer, limit_s: float) -> None:
    srv.script(Reply.reset())
    with guard_for(srv.base_url) as guard:
        d, elapsed = check(guard, Stage.PROMPT)
    assert d.action is Action.ALLOW and d.failure is None and not d.degraded
    assert len(srv.completion_requests()) == 2 and elapsed <= limit_s


def test_one_429_then_recovery(srv: FakeOpenAIServer) -> None:
    srv.script(Reply.error(429, retry_after=0))
    with guard_for(srv.base_url) as guard:
        d, _ = check(guard, Stage.PROMPT)
    assert d.action is Action.ALLOW and d.failure is None
    assert len(srv.completion_requests()) == 2


# ------------------------------------------------------------------------------ batches
def test_exception_mid_batch_scripted_fails_whole_stage() -> None:
    """A long text is judged as several windows in one engine batch; the responder raises on the
    2nd window. No partial batch: the stage ends in its fail mode, not in a verdict from window 1."""
    seen: list[str] = []

    def responder(prompt: str) -> str:
        seen.append(prompt)
        if len(seen) == 2:
            raise RuntimeError("CUDA error: device-side assert (simulated)")
        return GR_SAFE

    text = " ".join(f"word{i}" for i in range(600))  # ~4.7k chars -> several windows
    for fail_mode in ("closed", "open"):
        seen.clear()
        cfg = GuardConfig(
            fail_mode=fail_mode,
            models={"GuardReasoner-1B": GuardModelConfig(
                family="guardreasoner", max_input_chars=1_000, window_overlap_chars=100)},
            stages={"prompt": {"guards": ["GuardReasoner-1B"]}, "reasoning": {"enabled": False},
                    "response": {"guards": ["GuardReasoner-1B"]}},
        )
        with Guard(cfg, engine=ScriptedEngine(responder)) as guard:
            d = guard.check_prompt(text)
        assert len(seen) == 2  # the batch stopped at the failing item
        assert d.failure is FailureKind.ENGINE_ERROR
        assert d.reason.startswith("guard_unavailable") and "CUDA error" in d.verdicts[0].parse_error
        assert len(d.verdicts) == 1 and d.verdicts[0].failure is FailureKind.ENGINE_ERROR
        assert d.action is (Action.BLOCK if fail_mode == "closed" else Action.ALLOW)
        assert d.degraded is (fail_mode == "open")


def test_server_fails_one_of_several_concurrent_window_requests(srv: FakeOpenAIServer) -> None:
    """Windows of one text go out as concurrent HTTP requests; one gets a 500 at once while the
    others hang. The whole call fails immediately (the others are cancelled, not awaited)."""

    others = threading.Semaphore(0)

    def replies(rec: RecordedRequest) -> Reply:
        if "POISON" in rec.prompt_text:
            # Fail only once two other windows are in flight, so the test sees concurrent requests
            # being cancelled rather than racing the client's send of the later windows.
            for _ in range(2):
                others.acquire(timeout=2.0)
            return Reply.error(500, "kernel panic")
        others.release()
        return Reply.slow(5.0, GR_SAFE)

    srv.default = replies
    text = ("lorem ipsum " * 80) + " POISON " + ("dolor sit " * 120)  # ~2.2k chars, 3+ windows
    with guard_for(srv.base_url, max_input_chars=800, overlap=50) as guard:
        d, elapsed = check(guard, Stage.PROMPT, text)
    reqs = srv.completion_requests()
    assert len(reqs) >= 3
    assert sum("POISON" in r.prompt_text for r in reqs) >= 1
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR
    assert "HTTP 500" in (d.detail or "")
    assert elapsed < 3.0, "the hanging windows (5 s each) were awaited instead of cancelled"


async def test_one_failing_check_among_concurrent_checks(srv: FakeOpenAIServer) -> None:
    """Independent concurrent checks: the server fails one; only that decision is a failure."""

    def replies(rec: RecordedRequest) -> Reply:
        if "poison" in rec.prompt_text:
            return Reply.reset()
        return Reply(delay_s=0.05, text=GR_SAFE)

    srv.default = replies
    guard = guard_for(srv.base_url, circuit=CircuitConfig(failure_threshold=100))
    try:
        texts = [f"message {i}" for i in range(7)] + ["poison message"]
        ds = await asyncio.gather(*(guard.acheck_prompt(t) for t in texts))
    finally:
        await guard.aclose()
    assert [d.action for d in ds[:-1]] == [Action.ALLOW] * 7
    assert all(d.failure is None and d.verdicts[0].ok for d in ds[:-1])
    # Reset on every attempt: retried, then given up, or the deadline ends the retries first
    # (which of the two depends on scheduling; both are typed failures).
    assert ds[-1].action is Action.BLOCK, ds[-1].reason
    assert ds[-1].failure in (FailureKind.ENGINE_ERROR, FailureKind.TIMEOUT), ds[-1].reason


# ------------------------------------------------------------------------------ circuit breaker
def test_circuit_stops_hammering_and_probes_for_recovery(srv: FakeOpenAIServer) -> None:
    srv.default = Reply.error(500, "down for maintenance")  # not retried: 1 request per check
    circuit = CircuitConfig(failure_threshold=3, reset_timeout_s=0.6)
    with guard_for(srv.base_url, circuit=circuit) as guard:
        for _ in range(3):
            d, _ = check(guard, Stage.PROMPT)
            assert d.failure is FailureKind.ENGINE_ERROR
        assert len(srv.completion_requests()) == 3
        (breaker,) = guard.circuit_breakers()
        assert breaker.state is CircuitState.OPEN and breaker.stats["opened"] == 1

        t0 = time.perf_counter()
        for _ in range(20):
            d, _ = check(guard, Stage.PROMPT)
            assert d.failure is FailureKind.CIRCUIT_OPEN and d.action is Action.BLOCK
            assert d.reason == "guard_unavailable" and (d.detail or "").startswith("circuit open")
        assert time.perf_counter() - t0 < 1.0  # fast failures, not 20 deadlines
        assert len(srv.completion_requests()) == 3, "an open circuit still reached the server"
        assert breaker.stats["rejected"] == 20

        srv.default = healthy  # the server comes back
        time.sleep(0.7)
        assert breaker.state is CircuitState.HALF_OPEN
        d, _ = check(guard, Stage.PROMPT)  # the probe
        assert d.action is Action.ALLOW and d.failure is None
        assert len(srv.completion_requests()) == 4
        assert breaker.state is CircuitState.CLOSED
        for _ in range(3):
            assert check(guard, Stage.PROMPT)[0].failure is None
        assert len(srv.completion_requests()) == 7


def test_failed_probe_reopens_and_restarts_cooldown(srv: FakeOpenAIServer) -> None:
    srv.default = Reply.error(500)
    with guard_for(srv.base_url, circuit=CircuitConfig(failure_threshold=2, reset_timeout_s=0.4)) as guard:
        for _ in range(2):
            check(guard, Stage.PROMPT)
        (breaker,) = guard.circuit_breakers()
        assert breaker.state is CircuitState.OPEN
        time.sleep(0.45)
        d, _ = check(guard, Stage.PROMPT)  # probe, still failing
        assert d.failure is FailureKind.ENGINE_ERROR
        assert len(srv.completion_requests()) == 3
        assert breaker.state is CircuitState.OPEN and breaker.stats["opened"] == 2
        d, _ = check(guard, Stage.PROMPT)
        assert d.failure is FailureKind.CIRCUIT_OPEN
        assert len(srv.completion_requests()) == 3
        assert 0.2 < breaker.retry_in_s() <= 0.4


def test_circuit_counts_connection_drops_as_one_failure_per_call(srv: FakeOpenAIServer) -> None:
    """A dead engine that accepts and drops connections: each call retries (3 attempts), then the
    circuit opens and no further connection is made."""
    srv.default = Reply.close()
    with guard_for(srv.base_url, circuit=CircuitConfig(failure_threshold=2, reset_timeout_s=30)) as guard:
        for _ in range(2):
            assert check(guard, Stage.PROMPT)[0].failure is FailureKind.ENGINE_ERROR
        assert len(srv.completion_requests()) == 6
        for _ in range(10):
            d, elapsed = check(guard, Stage.PROMPT)
            assert d.failure is FailureKind.CIRCUIT_OPEN and elapsed < 0.5  # no retries, no deadline
        assert len(srv.completion_requests()) == 6


def test_circuit_on_closed_port_fails_fast() -> None:
    with guard_for(dead_url(), circuit=CircuitConfig(failure_threshold=2, reset_timeout_s=30)) as guard:
        for _ in range(2):
            assert check(guard, Stage.PROMPT)[0].failure is FailureKind.ENGINE_ERROR
        t0 = time.perf_counter()
        ds = [check(guard, Stage.PROMPT)[0] for _ in range(50)]
        assert time.perf_counter() - t0 < 1.0
    assert {d.failure for d in ds} == {FailureKind.CIRCUIT_OPEN}


def test_timeouts_open_the_circuit(srv: FakeOpenAIServer) -> None:
    srv.default = Reply.slow(5.0, GR_SAFE)
    with guard_for(srv.base_url, timeout_s=1.0,
                   circuit=CircuitConfig(failure_threshold=2, reset_timeout_s=30)) as guard:
        for _ in range(2):
            assert check(guard, Stage.PROMPT)[0].failure is FailureKind.TIMEOUT
        d, elapsed = check(guard, Stage.PROMPT)
    assert d.failure is FailureKind.CIRCUIT_OPEN and elapsed < 0.5  # well inside the 1 s deadline
    assert len(srv.completion_requests()) == 2


def test_unparseable_output_does_not_open_the_circuit(srv: FakeOpenAIServer) -> None:
    srv.default = Reply.ok("I refuse to follow any format")
    with guard_for(srv.base_url, circuit=CircuitConfig(failure_threshold=2)) as guard:
        ds = [check(guard, Stage.PROMPT)[0] for _ in range(5)]
        (breaker,) = guard.circuit_breakers()
    assert {d.failure for d in ds} == {FailureKind.UNPARSEABLE}
    assert breaker.state is CircuitState.CLOSED and len(srv.completion_requests()) == 5


def test_circuit_open_under_fail_open_is_degraded_allow(srv: FakeOpenAIServer) -> None:
    srv.default = Reply.error(500)
    with guard_for(srv.base_url, fail_mode="open",
                   circuit=CircuitConfig(failure_threshold=1, reset_timeout_s=30)) as guard:
        check(guard, Stage.PROMPT)
        d, _ = check(guard, Stage.PROMPT, "some text")
    assert d.action is Action.ALLOW and d.degraded and d.failure is FailureKind.CIRCUIT_OPEN
    assert d.text == "some text" and len(srv.completion_requests()) == 1


async def test_half_open_lets_one_probe_through(srv: FakeOpenAIServer) -> None:
    srv.default = Reply.error(500)
    guard = guard_for(srv.base_url, circuit=CircuitConfig(failure_threshold=1, reset_timeout_s=0.3))
    try:
        await guard.acheck_prompt("x")
        srv.default = Reply(delay_s=0.3, text=GR_SAFE)
        await asyncio.sleep(0.35)
        ds = await asyncio.gather(*(guard.acheck_prompt(f"m{i}") for i in range(6)))
    finally:
        await guard.aclose()
    assert len(srv.completion_requests()) == 2  # the first failure and exactly one probe
    assert sum(d.failure is None for d in ds) == 1
    assert sum(d.failure is FailureKind.CIRCUIT_OPEN for d in ds) == 5


def test_circuit_disabled_keeps_calling(srv: FakeOpenAIServer) -> None:
    srv.default = Reply.error(500)
    with guard_for(srv.base_url, circuit=CircuitConfig(enabled=False, failure_threshold=1)) as guard:
        ds = [check(guard, Stage.PROMPT)[0] for _ in range(4)]
        assert not isinstance(guard.engine("GuardReasoner-1B"), BreakerEngine)
        assert guard.circuit_breakers() == []
    assert {d.failure for d in ds} == {FailureKind.ENGINE_ERROR}
    assert len(srv.completion_requests()) == 4


def test_breaker_engine_delegates_to_inner() -> None:
    inner = ScriptedEngine([GR_SAFE])
    with Guard(GuardConfig(), engine=inner) as guard:
        guard.check_prompt("hi")
        e = guard.engine("GuardReasoner-1B")
        assert isinstance(e, BreakerEngine) and e.inner is inner
        assert e.calls == 1 and e.prompts == inner.prompts  # attributes reach the wrapped engine
