"""Hypothesis fuzz: parsers never raise on arbitrary text; under fail-closed no engine failure ever
yields ALLOW (and an ALLOW always comes from a real verdict)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrails_plugin import Action, Guard, GuardConfig, Stage, Verdict
from guardrails_plugin.engines.breaker import CircuitConfig
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.errors import GuardEngineError, GuardTimeoutError
from guardrails_plugin.models import FlexGuard, GuardReasoner, ReasoningShield
from guardrails_plugin.windowing import split_windows

PARSERS = [ReasoningShield(), GuardReasoner(), FlexGuard()]

# Text that looks like guard output: fragments of each protocol mixed with noise, so the fuzzer
# reaches the parsers' deep branches, not just "no match".
FRAGMENTS = [
    '"Judgment": ', "Judgment:", "**Judgement**: ", "0", "0.5", "1", "1.5", "0/1", "\n",
    "Answers:", "Answers: \n", "Request: ", "Completion: ", "Response: ", "harmful", "unharmful",
    "refusal", "compliance", "None", "<think>", "</think>", "SAFE", "VIO, ILG", "JAIL", "85", "101",
    "-3", "RISK_SCORE", "CATEGORY", '"Analysis": ', "**", "：", " ", "\t", "\x00", "\ud800", "💣",
]
guardish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=30).map("".join)
anytext = st.one_of(st.text(max_size=400), guardish)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("stage", [None, *Stage])
@FUZZ
@given(text=anytext)
def test_parsers_never_raise(parser, stage, text: str) -> None:
    v = parser.parse(text, stage)
    assert isinstance(v, Verdict)
    assert 0.0 <= v.risk <= 1.0
    assert v.raw_output == text
    if not v.parse_ok:
        assert v.risk == 1.0 and v.parse_error and v.failure is not None  # fails closed, visibly


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: type(p).__name__)
@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.none(), st.integers(), st.binary(max_size=50), st.lists(st.text(max_size=5))))
def test_parsers_never_raise_on_non_text(parser, value) -> None:
    v = parser.parse(value, Stage.RESPONSE)
    assert isinstance(v, Verdict) and not v.parse_ok and v.risk == 1.0


# -------------------------------------------------------------------- engine failures under fail-closed
EXCEPTIONS = [
    RuntimeError("boom"), ValueError("bad"), KeyError("k"), TypeError("t"), ZeroDivisionError(),
    ConnectionResetError("reset"), OSError("io"), MemoryError(), AttributeError("a"),
    RecursionError(), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), AssertionError("a"),
    GuardEngineError("down"), GuardEngineError("http 500"), GuardTimeoutError("slow"),
    asyncio.TimeoutError(), NotImplementedError(), StopIteration(),
]

# A failure: raise, return a non-string, return garbage, or hang past the deadline.
failure = st.one_of(
    st.sampled_from(EXCEPTIONS).map(lambda e: ("raise", e)),
    st.sampled_from([None, 3, b"bytes", ["list"], {"d": 1}]).map(lambda v: ("return", v)),
    anytext.map(lambda t: ("garbage", t)),
    st.just(("hang", None)),
)
good = st.sampled_from([
    "x\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n",
    '"Analysis": ok\n"Judgment": 0',
])


class FuzzEngine:
    """Per window: a scripted outcome (good answer or a failure)."""

    name = "fuzz"

    def __init__(self, plan):
        self.plan = plan

    async def generate(self, requests, *, timeout=None):
        out = []
        for i, _ in enumerate(requests):
            kind, value = self.plan[i % len(self.plan)]
            if kind == "raise":
                raise value
            if kind == "hang":
                await asyncio.sleep(10)
            out.append(value)
        return out

    def render(self, r):
        return ""

    async def aclose(self):
        return None


def _guard(engine) -> Guard:
    cfg = GuardConfig(
        fail_mode="closed",
        circuit=CircuitConfig(failure_threshold=3, reset_timeout_s=0.05),
        models={
            "GuardReasoner-1B": {"family": "guardreasoner", "timeout_s": 0.05,
                                 "max_input_chars": 100, "window_overlap_chars": 10},
            "ReasoningShield-1B": {"family": "reasoningshield", "timeout_s": 0.05,
                                   "max_input_chars": 100, "window_overlap_chars": 10},
        },
    )
    return Guard(cfg, engine=engine)


def _allow_is_earned(d) -> None:
    if d.action is Action.ALLOW:
        assert d.verdicts and all(v.ok for v in d.verdicts) and not d.degraded and d.failure is None, d


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.one_of(failure, good.map(lambda t: ("ok", t))), min_size=1, max_size=4).filter(
        lambda p: any(k != "ok" for k, _ in p)),
    stage=st.sampled_from(list(Stage)),
    n_chars=st.sampled_from([5, 150, 400]),
)
def test_no_engine_failure_yields_allow_under_fail_closed(plan, stage, n_chars) -> None:
    """Whatever mix of failures the engine produces across windows, a check ends in BLOCK unless
    every window got a real verdict. (A garbage output that happens to be a well-formed safe
    verdict is a verdict; `_allow_is_earned` checks that an ALLOW always is one.)"""
    guard = _guard(FuzzEngine(plan))
    text = ("lorem ipsum " * 40)[:n_chars]
    if stage is Stage.PROMPT:
        d = guard.check_prompt(text)
    elif stage is Stage.REASONING:
        d = guard.check_reasoning(query="q", reasoning=text)
    else:
        d = guard.check_response(prompt="q", response=text)
    _allow_is_earned(d)
    n_windows = len(d.verdicts)
    windows_plan = [plan[i % len(plan)] for i in range(len(split_windows(text, 100, 10)))]
    if any(kind in ("raise", "return", "hang") for kind, _ in windows_plan):
        assert d.action is Action.BLOCK and d.failure is not None, (plan, d)
    assert n_windows >= 1
    if d.action is Action.ALLOW:
        assert all(kind in ("ok", "garbage") for kind, _ in windows_plan)


@settings(max_examples=60, deadline=None)
@given(exc=st.sampled_from(EXCEPTIONS), text=st.text(min_size=1, max_size=50).filter(str.strip))
def test_scripted_responder_exceptions_block(exc, text) -> None:
    def responder(_: str) -> str:
        raise exc

    guard = Guard(GuardConfig(fail_mode="closed"), engine=ScriptedEngine(responder))
    d = guard.check_prompt(text)
    assert d.action is Action.BLOCK and d.failure is not None
