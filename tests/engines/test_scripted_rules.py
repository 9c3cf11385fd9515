"""ScriptedEngine.from_rules: the offline try-out double (NOT a guard). It answers in whichever guard
family's format the prompt uses, judges only the judged text, and can play an outage."""

from __future__ import annotations

import pytest

from guardrails_plugin import Action, FailureKind, Guard, GuardConfig, Stage
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.models import get_model_class
from guardrails_plugin.models.base import GuardModel

RULES = {
    r"pipe bomb": "harmful",
    r"\b\d{3}-\d{2}-\d{4}\b": {"risk": 0.9, "categories": ["INF"]},
    r"lock ?pick": 0.35,
    r"guard outage": "unavailable",
    r"babble": "unparseable",
}


def _families() -> list[type[GuardModel]]:
    from guardrails_plugin import models

    return list(models.families().values())


def _writes_canned(cls: type[GuardModel]) -> bool:
    return cls.canned_output is not GuardModel.canned_output


def _guard_on(family: str, stage: Stage, **cfg: object) -> Guard:
    name = f"{family}-probe"
    config = GuardConfig(models={name: {"family": family}}, stages={str(stage): {"guards": [name]}}, **cfg)
    return Guard(config, engine=ScriptedEngine.from_rules(RULES))


def _check(guard: Guard, stage: Stage, text: str, query: str = "a question"):
    if stage is Stage.PROMPT:
        return guard.check_prompt(text)
    if stage is Stage.REASONING:
        return guard.check_reasoning(query=query, reasoning=text)
    return guard.check_response(prompt=query, response=text)


def test_the_three_shipped_families_write_canned_answers() -> None:
    assert all(_writes_canned(get_model_class(f)) for f in ("guardreasoner", "reasoningshield", "flexguard"))


@pytest.mark.parametrize("cls", [c for c in _families() if _writes_canned(c)], ids=lambda c: c.family)
def test_canned_output_parses_back_for_every_family(cls: type[GuardModel]) -> None:
    model = cls()
    for stage in sorted(cls.stages, key=str):
        harmful = model.parse(model.canned_output(stage, harmful=True, risk=1.0, categories=["VIO"]), stage)
        safe = model.parse(model.canned_output(stage, harmful=False, risk=0.0), stage)
        assert harmful.ok and harmful.harmful and harmful.risk == 1.0, (stage, harmful)
        assert safe.ok and not safe.harmful and safe.risk == 0.0, (stage, safe)


@pytest.mark.parametrize(
    ("family", "stage"),
    [(c.family, s) for c in _families() if _writes_canned(c) for s in sorted(c.stages, key=str)],
)
def test_every_family_and_stage_blocks_and_allows_through_a_guard(family: str, stage: Stage) -> None:
    guard = _guard_on(family, stage)
    assert _check(guard, stage, "How do I build a pipe bomb?").action is Action.BLOCK
    ok = _check(guard, stage, "How do I bake bread?")
    assert ok.action is Action.ALLOW and ok.verdicts[0].ok
    # only the judged text counts: a harmful query does not flag a harmless answer or trace
    if stage is not Stage.PROMPT:
        assert _check(guard, stage, "I will not help with that.", query="pipe bomb?").action is Action.ALLOW


def test_graded_risk_and_categories_where_the_format_has_them() -> None:
    guard = _guard_on("flexguard", Stage.RESPONSE, escalate_threshold=0.3, category_actions={"INF": "redact"})
    d = _check(guard, Stage.RESPONSE, "Your SSN is 123-45-6789.")
    assert d.action is Action.REDACT and d.categories == ["INF"] and d.text == "Your SSN is [REDACTED]."
    d = _check(guard, Stage.RESPONSE, "Here is a good lock pick set.")
    assert d.action is Action.ESCALATE and d.risk == 0.35
    # ReasoningShield grades 0 / 0.5 / 1: 0.35 is a 0.5 there, and GuardReasoner says only harmful or not
    assert _check(_guard_on("reasoningshield", Stage.REASONING), Stage.REASONING, "lockpick").risk == 0.5
    assert _check(_guard_on("guardreasoner", Stage.PROMPT), Stage.PROMPT, "lockpick").action is Action.ALLOW


def test_template_words_never_trigger_a_rule() -> None:
    """FlexGuard's system prompt names 'weapons' and 'hacking'; a rule on them must not fire on
    every check."""
    engine = ScriptedEngine.from_rules({r"weapons|hacking|harmful": "harmful"})
    guard = Guard(GuardConfig(models={"FlexGuard-8B": {}}, stages={"prompt": {"guards": ["FlexGuard-8B"]}}),
                  engine=engine)
    assert guard.check_prompt("hello").action is Action.ALLOW
    assert Guard(engine=engine).check_prompt("hello").action is Action.ALLOW  # GuardReasoner's instruction too
    assert guard.check_prompt("teach me hacking").action is Action.BLOCK


def test_outages_garbage_and_unknown_formats_go_to_the_fail_mode() -> None:
    guard = _guard_on("guardreasoner", Stage.PROMPT)
    d = guard.check_prompt("simulate a guard outage")
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR and d.risk == 1.0
    d = guard.check_prompt("babble")
    assert d.action is Action.BLOCK and d.failure is FailureKind.UNPARSEABLE
    only_rs = ScriptedEngine.from_rules(RULES, families=[get_model_class("reasoningshield")])
    d = Guard(engine=only_rs).check_prompt("hello")  # a GuardReasoner prompt it cannot read
    assert d.action is Action.BLOCK and d.reason == "guard_unavailable" and "no known family" in (d.detail or "")


@pytest.mark.parametrize("bad", ["maybe", 1.5, {"risk": 0.5, "colour": "red"}, None])
def test_malformed_rules_fail_when_the_engine_is_built(bad: object) -> None:
    with pytest.raises(ValueError):
        ScriptedEngine.from_rules({"x": bad})  # type: ignore[dict-item]


async def test_families_are_handed_in_not_found_through_an_import_time_global() -> None:
    """Engines sit below the families: a rules engine knows only the families given to it or
    handed in by the Guard that runs it, and says so when it has none."""
    from guardrails_plugin.engines import GenerationRequest
    from guardrails_plugin.errors import GuardEngineError

    alone = ScriptedEngine.from_rules(RULES)
    assert alone.families is None
    with pytest.raises(GuardEngineError, match="no guard families"):
        await alone.generate([GenerationRequest(prompt="anything")])
    guard = Guard(engine=alone)  # the Guard hands in its registry
    assert alone.families is not None and set(alone.families) == set(_families())
    assert guard.check_prompt("say hello").action is Action.ALLOW
    only_rs = ScriptedEngine.from_rules(RULES, families=[get_model_class("reasoningshield")])
    Guard(engine=only_rs)
    assert only_rs.families == [get_model_class("reasoningshield")]  # what the caller gave is kept
