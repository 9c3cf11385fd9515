"""Guard -> TransformersEngine end to end on tiny random-weight models (the path users hit).

Random weights write gibberish, so every verdict is unparseable: fail-closed must BLOCK, fail-open
must ALLOW with ``degraded=True``. What this proves is the wiring (config -> adapter -> template ->
tokenisation -> generation -> parser -> policy), not a guard's judgement."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrails_plugin import Action, FailureKind, Guard, GuardConfig


def _config(model_dir: Path, family: str, *, fail_mode: str) -> GuardConfig:
    models = {"G": {"family": family, "model": str(model_dir), "max_new_tokens": 8, "timeout_s": 120}}
    if family == "reasoningshield":
        stages = {"prompt": {"enabled": False}, "reasoning": {"guards": ["G"]}, "response": {"guards": ["G"]}}
    else:
        stages = {"prompt": {"guards": ["G"]}, "reasoning": {"enabled": False}, "response": {"guards": ["G"]}}
    return GuardConfig.build(models=models, stages=stages, fail_mode=fail_mode)


@pytest.mark.parametrize(("family", "fixture"), [
    ("guardreasoner", "tiny_llama_dir"), ("reasoningshield", "tiny_llama_dir"), ("flexguard", "tiny_qwen3_dir"),
])
def test_random_weights_fail_closed_then_open(family: str, fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(fixture)
    with Guard(_config(model_dir, family, fail_mode="closed")) as guard:
        engine = guard.engine("G")
        d = guard.check_response(prompt="How do I bake bread?", response="Mix flour and water.")
        assert d.action is Action.BLOCK and d.failure is FailureKind.UNPARSEABLE
        assert d.reason == "guard_unparseable" and d.text == guard.config.refusal_message
        (v,) = d.verdicts
        assert not v.parse_ok and v.raw_output  # the model did generate; the parser refused it
        assert getattr(engine, "inner", engine).stats["rows"] >= 1  # really went through the model

    with Guard(_config(model_dir, family, fail_mode="open")) as guard:
        d = guard.check_response(prompt="How do I bake bread?", response="Mix flour and water.")
        assert d.action is Action.ALLOW and d.degraded and d.text == "Mix flour and water."


def test_engine_is_shared_by_guards_on_the_same_weights(tiny_llama_dir: Path) -> None:
    cfg = GuardConfig.build(models={
        "GuardReasoner-1B": {"family": "guardreasoner", "model": str(tiny_llama_dir), "max_new_tokens": 4},
        "ReasoningShield-1B": {"family": "reasoningshield", "model": str(tiny_llama_dir), "max_new_tokens": 4},
    })
    with Guard(cfg) as guard:
        a, b = guard.engine("GuardReasoner-1B"), guard.engine("ReasoningShield-1B")
        assert getattr(a, "inner", a) is getattr(b, "inner", b)  # one copy of the weights
