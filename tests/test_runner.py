"""The per-model runner (guardrails_plugin/runner.py): cancellation, typed session keys, failure
kinds, the Engine protocol's optional parts, and that it runs without a Guard."""

from __future__ import annotations

import asyncio
import sys

import pytest

from guardrails_plugin import FailureKind, Guard, GuardConfig, Stage
from guardrails_plugin.config import GuardModelConfig
from guardrails_plugin.engines import Engine, ScriptedEngine, SessionKey, as_engine
from guardrails_plugin.engines.base import GenerationRequest, ScoreRequest
from guardrails_plugin.engines.openai_engine import OpenAIEngine
from guardrails_plugin.errors import GuardEngineError, GuardTimeoutError, ScoringUnsupported
from guardrails_plugin.loading import ModelPool
from guardrails_plugin.models import GuardReasoner
from guardrails_plugin.runner import Runner
from guardrails_plugin.types import GuardRequest

GR_SAFE = "# Task 1\n...\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
GR_HARMFUL = "# Task 1\n...\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful\n"

pytestmark = pytest.mark.timeout(60)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
@pytest.mark.parametrize("mode", ["full", "fast", "cascade"])
async def test_cancelling_the_caller_propagates_out_of_the_runner(mode: str) -> None:
    """The runner turns every engine failure into a verdict, but the caller's own cancellation
    must propagate: a cancelled check is no check, not a fail-mode verdict. (Through
    ``Guard.acheck`` asyncio.gather would re-raise the CancelledError anyway; the runner's own
    coroutine, driven as a task here, shows whether the pipeline swallows it.)"""
    guard = Guard(GuardConfig(mode=mode), engine=ScriptedEngine([GR_SAFE], latency_s=5))
    request = guard.request(Stage.PROMPT, prompt="hello")
    task = asyncio.ensure_future(guard.runner.run("GuardReasoner-1B", request))
    await asyncio.sleep(0.05)  # inside the engine call
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    await guard.aclose()


class KeepingEngine(ScriptedEngine):
    """A scripted engine that keeps 'KV caches' per session key, as TransformersEngine does."""

    def __init__(self, responder):
        super().__init__(responder)
        self.kept: dict[SessionKey, int] = {}
        self.seen: list[SessionKey | None] = []  # every window's key, in call order

    async def generate(self, requests, *, timeout=None):
        for r in requests:
            self.seen.append(r.session_id)
            if r.session_id is not None:
                self.kept[r.session_id] = self.kept.get(r.session_id, 0) + 1
        return await super().generate(requests, timeout=timeout)

    def session_ids(self) -> list[SessionKey]:
        return list(self.kept)

    def release_session(self, key: SessionKey) -> bool:
        return self.kept.pop(key, None) is not None


def test_session_keys_are_typed_per_stream_guard_and_window_and_released_per_stream() -> None:
    engine = KeepingEngine([GR_SAFE])
    cfg = GuardConfig(models={"GuardReasoner-1B": GuardModelConfig(family="guardreasoner", max_input_chars=60,
                                                                   window_overlap_chars=5)})
    guard = Guard(cfg, engine=engine)
    text = "a" * 50 + " " + "b" * 50  # two windows
    d = guard.check_prompt(text, metadata={"session_id": "s1"})
    assert len(d.verdicts) == 2
    guard.check_prompt(text[:40], metadata={"session_id": "s2"})
    guard.check_prompt("no stream")  # a single check keeps nothing
    assert engine.seen == [
        SessionKey("s1", "GuardReasoner-1B", 0), SessionKey("s1", "GuardReasoner-1B", 1),
        SessionKey("s2", "GuardReasoner-1B", 0), None,
    ]
    # window 0 of s1 is closed (the text moved past it) and judged: its cache is released at once;
    # the open tail window keeps its cache for the next, longer check of the stream
    assert set(engine.kept) == {SessionKey("s1", "GuardReasoner-1B", 1), SessionKey("s2", "GuardReasoner-1B", 0)}
    guard.release_session("s1")
    assert set(engine.kept) == {SessionKey("s2", "GuardReasoner-1B", 0)}
    guard.close()


@pytest.mark.parametrize(("exc", "kind"), [
    (GuardEngineError("refused by a nested breaker", kind=FailureKind.CIRCUIT_OPEN), FailureKind.CIRCUIT_OPEN),
    (GuardTimeoutError("slow"), FailureKind.TIMEOUT),
    (GuardEngineError("down"), FailureKind.ENGINE_ERROR),
    (RuntimeError("engine bug"), FailureKind.ENGINE_ERROR),
])
def test_engine_failures_become_verdicts_of_their_failure_kind(exc: Exception, kind: FailureKind) -> None:
    def boom(_: str) -> str:
        raise exc

    # no circuit breaker: the engine's own error kind is what the verdict records
    guard = Guard(GuardConfig(circuit={"enabled": False}), engine=ScriptedEngine(boom))
    d = guard.check_prompt("hello")
    assert d.failure is kind and d.verdicts[0].failure is kind
    guard.close()


class GenerateOnly:
    """An engine written against the old protocol: generate only."""

    name = "generate-only"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, requests, *, timeout=None):
        self.calls += 1
        return [GR_HARMFUL] * len(requests)


async def test_an_engine_with_only_generate_is_completed_to_the_protocol() -> None:
    inner = GenerateOnly()
    engine = as_engine(inner)
    assert isinstance(engine, Engine) and engine.name == "generate-only" and engine.session_ids() == []
    with pytest.raises(ScoringUnsupported):
        await engine.score([])
    assert as_engine(ScriptedEngine(["x"])) is not None and isinstance(ScriptedEngine(["x"]), Engine)
    with pytest.raises(TypeError):
        as_engine(object())
    # fast mode on it generates instead (never less checking than asked for)
    guard = Guard(GuardConfig(mode="fast"), engine=inner)
    d = await guard.acheck_prompt("hello")
    assert d.verdicts[0].ok and d.verdicts[0].risk == 1.0 and inner.calls == 1
    assert guard.runner.stats.full_fallbacks == 1
    await guard.aclose()


async def test_openai_engine_refuses_raw_prefix_scoring_before_any_request() -> None:
    engine = OpenAIEngine("http://127.0.0.1:9", model="m")  # nothing listens: no request may be sent
    with pytest.raises(ScoringUnsupported, match="transformers engine"):
        await engine.score([ScoreRequest(GenerationRequest(prompt="x"), candidates=("a",), raw_prefix=True)])
    await engine.aclose()


async def test_the_runner_runs_without_a_guard() -> None:
    """A check needs the pool (loading.ModelPool), never the facade: no Guard is built here."""
    config = GuardConfig()
    runner = Runner(config, ModelPool(config, engine=ScriptedEngine([GR_HARMFUL])))
    (v,) = await runner.run("GuardReasoner-1B", GuardRequest(stage=Stage.PROMPT, prompt="hi"))
    assert v.ok and v.risk == 1.0 and v.window == (0, 2) and v.guard == "GuardReasoner-1B"
    assert isinstance(runner.pool.model("guardreasoner-1b"), GuardReasoner)  # names match case-insensitively
