"""Policy: thresholds, escalation band, category overrides, redaction, fail modes."""

from __future__ import annotations

import pytest

from guardrails_plugin import Action, FailureKind, GuardConfig, GuardRequest, Stage, Verdict
from guardrails_plugin.config import StageConfig
from guardrails_plugin.policy import Policy


def v(risk: float, *, guard: str = "g", cats: list[str] | None = None, ok: bool = True,
      failure: FailureKind | None = None, window: tuple[int, int] | None = None) -> Verdict:
    return Verdict(guard=guard, stage=Stage.RESPONSE, risk=risk, categories=cats or [], parse_ok=ok,
                   failure=failure, window=window)


REQ = GuardRequest(stage=Stage.RESPONSE, prompt="q", response="the answer text")


@pytest.mark.parametrize(
    ("strictness", "risk", "action"),
    [
        ("strict", 0.19, Action.ALLOW), ("strict", 0.2, Action.BLOCK),
        ("moderate", 0.39, Action.ALLOW), ("moderate", 0.4, Action.BLOCK),
        ("loose", 0.5, Action.ALLOW), ("loose", 0.6, Action.BLOCK),
    ],
)
def test_strictness_presets(strictness: str, risk: float, action: Action) -> None:
    d = Policy(GuardConfig(strictness=strictness, escalate_threshold=None)).decide(REQ, [v(risk)])
    assert d.action is action
    assert d.risk == pytest.approx(risk)
    assert d.text == ("the answer text" if action is Action.ALLOW else "I can't help with that.")


def test_worst_verdict_wins_and_reason_names_guard() -> None:
    d = Policy(GuardConfig()).decide(REQ, [v(0.0, guard="a"), v(1.0, guard="b")])
    assert d.action is Action.BLOCK
    assert d.reason == "risk 1.00 >= 0.40 (b)"


def test_escalate_band_allow_or_hold() -> None:
    cfg = GuardConfig(strictness="loose", escalate_threshold=0.5)
    d = Policy(cfg).decide(REQ, [v(0.5)])
    assert d.action is Action.ESCALATE and not d.hold and not d.blocked
    assert d.text == "the answer text"
    held = Policy(GuardConfig(strictness="loose", escalate_threshold=0.5, escalation_hold=True)).decide(REQ, [v(0.5)])
    assert held.action is Action.ESCALATE and held.hold and held.blocked
    assert held.text == "I can't help with that."
    assert Policy(cfg).decide(REQ, [v(0.4)]).action is Action.ALLOW


def test_override_escalate_holds_like_the_band() -> None:
    """A flagged verdict whose per-category or per-stage action is ESCALATE must honour
    escalation_hold: held (blocked, refusal text), never shown as if allowed."""
    cat = GuardConfig(category_actions={"S1": Action.ESCALATE}, escalation_hold=True)
    d = Policy(cat).decide(REQ, [v(0.9, cats=["S1"])])
    assert d.action is Action.ESCALATE and d.hold and d.blocked
    assert d.text == "I can't help with that."
    staged = GuardConfig(
        escalation_hold=True, stages={"response": {"guards": ["GuardReasoner-1B"], "flagged_action": "escalate"}}
    )
    d2 = Policy(staged).decide(REQ, [v(0.9)])
    assert d2.action is Action.ESCALATE and d2.hold and d2.blocked
    unheld = Policy(GuardConfig(category_actions={"S1": Action.ESCALATE})).decide(REQ, [v(0.9, cats=["S1"])])
    assert unheld.action is Action.ESCALATE and not unheld.hold and not unheld.blocked
    assert unheld.text == "the answer text"


def test_category_override_redacts_and_most_severe_wins() -> None:
    cfg = GuardConfig(category_actions={"INF": Action.REDACT}, redact_placeholder="[X]")
    pol = Policy(cfg)
    d = pol.decide(REQ, [v(0.9, cats=["INF"])])
    assert d.action is Action.REDACT and d.text == "[X]"
    d2 = pol.decide(REQ, [v(0.9, cats=["INF", "VIO"])])
    assert d2.action is Action.BLOCK


def test_redaction_replaces_only_flagged_windows() -> None:
    req = GuardRequest(stage=Stage.RESPONSE, prompt="q", response="aaaa bbbb cccc")
    cfg = GuardConfig(category_actions={"INF": Action.REDACT}, redact_placeholder="#")
    d = Policy(cfg).decide(req, [v(0.0, window=(0, 5)), v(0.9, cats=["INF"], window=(5, 10)), v(0.0, window=(10, 14))])
    assert d.action is Action.REDACT
    assert d.text == "aaaa #cccc"


@pytest.mark.parametrize(
    ("failure", "reason"),
    [(FailureKind.ENGINE_ERROR, "guard_unavailable"), (FailureKind.TIMEOUT, "guard_timeout"),
     (FailureKind.UNPARSEABLE, "guard_unparseable")],
)
def test_fail_closed_blocks_with_reason(failure: FailureKind, reason: str) -> None:
    d = Policy(GuardConfig()).decide(REQ, [v(1.0, ok=failure is not FailureKind.UNPARSEABLE, failure=failure)])
    assert d.action is Action.BLOCK and d.failure is failure and d.reason == reason and d.detail
    assert not d.degraded


def test_fail_open_is_degraded_allow_per_stage() -> None:
    cfg = GuardConfig(stages={"response": StageConfig(guards=["GuardReasoner-1B"], fail_mode="open")})
    d = Policy(cfg).decide(REQ, [v(1.0, failure=FailureKind.ENGINE_ERROR)])
    assert d.action is Action.ALLOW and d.degraded and d.failure is FailureKind.ENGINE_ERROR
    # the prompt stage keeps the global fail-closed default
    preq = GuardRequest(stage=Stage.PROMPT, prompt="x")
    assert Policy(cfg).decide(preq, [Verdict(guard="g", stage=Stage.PROMPT, risk=1.0, failure=FailureKind.TIMEOUT)]).action is Action.BLOCK


def test_real_block_beats_fail_open() -> None:
    cfg = GuardConfig(fail_mode="open")
    d = Policy(cfg).decide(REQ, [v(1.0, failure=FailureKind.TIMEOUT), v(0.9, guard="ok")])
    assert d.action is Action.BLOCK and not d.degraded


def test_no_verdicts_is_a_failure_not_an_allow() -> None:
    assert Policy(GuardConfig()).decide(REQ, []).action is Action.BLOCK


def test_decision_json_roundtrip_and_raise() -> None:
    from guardrails_plugin import Decision, GuardrailViolation

    d = Policy(GuardConfig()).decide(REQ, [v(1.0, cats=["VIO"])])
    again = Decision.model_validate_json(d.model_dump_json())
    assert again == d
    with pytest.raises(GuardrailViolation) as ei:
        d.raise_for_action()
    assert ei.value.decision is d


# --- Mixed verdicts: one window/guard flagged, another could not answer (issue 15) -------------------
# Table: {flagged BLOCK / REDACT / ESCALATE (override), hold on/off} x {other failed: window / guard / none}
# x {closed / open}. Under fail-closed any failure blocks with its kind; under fail-open the flagged
# action covers the judged text and the decision says part of it went unjudged.
TEXT = "aaaa bbbb cccc dddd"
MIXED_REQ = GuardRequest(stage=Stage.RESPONSE, prompt="q", response=TEXT)
FLAGGED = {
    "block": ({}, Action.BLOCK),
    "redact": ({"INF": Action.REDACT}, Action.REDACT),
    "escalate": ({"INF": Action.ESCALATE}, Action.ESCALATE),
}


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
@pytest.mark.parametrize("other", ["window", "guard", "none"])
@pytest.mark.parametrize("hold", [False, True])
@pytest.mark.parametrize("flag", sorted(FLAGGED))
def test_mixed_flagged_and_failed_verdicts(flag: str, hold: bool, other: str, fail_mode: str) -> None:
    overrides, flagged_action = FLAGGED[flag]
    cfg = GuardConfig(fail_mode=fail_mode, category_actions=overrides, escalation_hold=hold)
    verdicts = [v(0.9, guard="a", cats=["INF"], window=(0, 10))]
    if other == "window":
        verdicts.append(v(1.0, guard="a", failure=FailureKind.TIMEOUT, ok=True, window=(5, len(TEXT))))
    elif other == "guard":
        verdicts.append(v(1.0, guard="b", ok=False, failure=FailureKind.UNPARSEABLE))
    d = Policy(cfg).decide(MIXED_REQ, verdicts)

    if other != "none" and fail_mode == "closed":
        expected_kind = FailureKind.TIMEOUT if other == "window" else FailureKind.UNPARSEABLE
        assert d.action is Action.BLOCK
        assert d.failure is expected_kind
        assert d.text == cfg.refusal_message
        assert "dddd" not in d.text
        assert d.risk == 1.0  # consistent with the failure verdict, never 0.0
        assert not d.degraded
        return

    assert d.action is flagged_action
    released = d.text != cfg.refusal_message
    if flagged_action is Action.BLOCK or (flagged_action is Action.ESCALATE and hold):
        assert not released and d.blocked
    elif flagged_action is Action.REDACT:
        assert d.text.startswith("[REDACTED]") and "aaaa" not in d.text
    else:  # ESCALATE without hold passes the text to the review queue
        assert d.text == TEXT
    if other == "none":
        assert d.failure is None and not d.degraded
    elif released:  # fail-open released text part of which no guard judged: say so
        assert d.degraded and d.failure is not None
    else:
        assert d.failure is not None or flagged_action is Action.BLOCK


def test_fail_open_escalate_band_still_applies_to_judged_part() -> None:
    cfg = GuardConfig(fail_mode="open", escalate_threshold=0.3)
    d = Policy(cfg).decide(REQ, [v(0.35, guard="a"), v(1.0, guard="b", ok=False, failure=FailureKind.TIMEOUT)])
    assert d.action is Action.ESCALATE and d.degraded and d.failure is FailureKind.TIMEOUT


def test_fail_closed_block_risk_is_not_zero() -> None:
    d = Policy(GuardConfig()).decide(REQ, [v(1.0, ok=False, failure=FailureKind.ENGINE_ERROR)])
    assert d.action is Action.BLOCK and d.failure is FailureKind.ENGINE_ERROR and d.risk == 1.0


@pytest.mark.parametrize(("strictness", "risk", "action"), [
    ("strict", 0.19, Action.ALLOW), ("strict", 0.2, Action.BLOCK),  # strict: the band is empty
    ("moderate", 0.19, Action.ALLOW), ("moderate", 0.2, Action.ESCALATE), ("moderate", 0.39, Action.ESCALATE),
    ("loose", 0.5, Action.ESCALATE), ("loose", 0.6, Action.BLOCK),
])
def test_default_escalate_band_starts_at_0_2(strictness: str, risk: float, action: Action) -> None:
    d = Policy(GuardConfig(strictness=strictness)).decide(REQ, [v(risk)])
    assert d.action is action
    if action is Action.ESCALATE:  # no hold by default: the text passes, the queue gets it
        assert d.text == "the answer text" and not d.blocked
