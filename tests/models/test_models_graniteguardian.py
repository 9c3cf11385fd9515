"""Granite Guardian 3.3 (and the 3.1 / 3.2 protocol): the authors' printed 3.3 prompt reproduced byte
for byte, criteria / think passed as template kwargs, the <score> and Yes/No parsers on the authors'
outputs and malformed ones, and fast scoring only where a probability method is documented."""

from __future__ import annotations

import hashlib
import math

import guard_renders as ref
import pytest
from families_support import PROMPT, RESPONSE, tiny_engine

from guardrails_plugin.engines.base import Distribution, ScoreResult
from guardrails_plugin.errors import GuardConfigError, GuardInputError
from guardrails_plugin.models import GraniteGuardian
from guardrails_plugin.models.categories import CODES
from guardrails_plugin.models.graniteguardian import CATEGORY_MAP
from guardrails_plugin.testing import guard_templates as gt
from guardrails_plugin.types import FailureKind, GuardRequest, Stage

pytestmark = pytest.mark.timeout(300)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


GROUNDED = GuardRequest(
    stage=Stage.RESPONSE, prompt="", response=ref.GRANITE_RESPONSE_TEXT,
    metadata={"documents": [{"doc_id": "0", "text": ref.GRANITE_CONTEXT_TEXT}]},
)


def test_reproduces_the_prompt_the_authors_printed(tmp_path_factory) -> None:
    """detailed_guide_no_think.ipynb cell 39 (groundedness, assistant-only, one document)."""
    engine = tiny_engine(tmp_path_factory, "granite-guardian-3.3")
    gg = GraniteGuardian(options={"criteria": "groundedness"})
    gen = gg.build_input(GROUNDED)
    assert gen.chat_template_kwargs == {
        "guardian_config": {"criteria_id": "groundedness"}, "think": False,
        "documents": [{"doc_id": "0", "text": ref.GRANITE_CONTEXT_TEXT}],
    }
    assert sha(engine.render(gen)) == ref.SHA256["GRANITE_3_3_GROUNDEDNESS_NO_THINK"]
    think = GraniteGuardian(options={"criteria": "groundedness", "think": True})
    assert engine.render(think.build_input(GROUNDED)) == ref.GRANITE_3_3_GROUNDEDNESS_NO_THINK.replace(
        "judge{no_think}", "judge{think}")  # cell 39 of the think guide: only the last line differs
    assert think.max_new_tokens == 2048 and gg.max_new_tokens == 64


def test_33_messages_and_kwargs() -> None:
    gg = GraniteGuardian()  # criteria harm, the authors' default
    assert gg.build_messages(PROMPT) == [{"role": "user", "content": "{USER_TEXT}"}]
    assert gg.build_messages(RESPONSE) == [{"role": "user", "content": "{USER_TEXT}"},
                                           {"role": "assistant", "content": "{ASSISTANT_TEXT}"}]
    assert gg.build_input(PROMPT).chat_template_kwargs == {"guardian_config": {"criteria_id": "harm"}, "think": False}
    custom = GraniteGuardian(options={"custom_criteria": "Mentions a competitor.", "custom_scoring_schema": "s"})
    assert custom.guardian_config() == {"custom_criteria": "Mentions a competitor.", "custom_scoring_schema": "s"}


def test_legacy_versions_render_like_the_30_template(tmp_path_factory) -> None:
    """3.1 / 3.2 keep 3.0's guardian_config={'risk_name': ...}; their own templates were not read, so
    the 3.0 template (a verbatim copy) stands in: the adapter's input must render its reference."""
    assert sha(gt.GRANITE_GUARDIAN_3_0_CHAT_TEMPLATE) == "961bc9dd4cda0774246e86b249f28532309d1dd19fcb997e6721d9c2f6759994"
    engine = tiny_engine(tmp_path_factory, "granite-guardian-3.0")
    for gg in (GraniteGuardian(options={"version": "3.1"}), GraniteGuardian("granite-guardian-3.2-5b")):
        assert gg.version() in ("3.1", "3.2")
        assert gg.build_input(PROMPT).chat_template_kwargs == {"guardian_config": {"risk_name": "harm"}}
        assert sha(engine.render(gg.build_input(PROMPT))) == ref.SHA256["GRANITE_3_0_PROMPT"]
        assert sha(engine.render(gg.build_input(RESPONSE))) == ref.SHA256["GRANITE_3_0_RESPONSE"]


def test_criteria_decide_stages_and_inputs() -> None:
    assert GraniteGuardian(options={"criteria": "jailbreak"}).stages == {Stage.PROMPT}
    grounded = GraniteGuardian(options={"criteria": "groundedness"})
    assert Stage.PROMPT not in grounded.stages
    with pytest.raises(GuardInputError, match="documents"):
        grounded.build_input(GuardRequest(stage=Stage.RESPONSE, prompt="q", response="a"))
    with pytest.raises(GuardConfigError, match="unknown criteria"):
        GraniteGuardian(options={"criteria": "toxicity"})
    with pytest.raises(GuardConfigError, match="think"):
        GraniteGuardian(options={"version": "3.2", "think": True})
    with pytest.raises(GuardConfigError, match="3.3"):
        GraniteGuardian("granite-guardian-3.1-8b", options={"criteria": "groundedness"})
    assert set(CATEGORY_MAP.values()) - {None} <= set(CODES)


TRACE = ("Okay I need to check if the assistant response is logically supported by the document(s) or not. \n"
         "Claim_error_span: on December 24, 1922 Since there is a risk associated, the score is yes.")


@pytest.mark.parametrize(
    ("text", "risk", "rationale"),
    [
        ("<score> yes </score>", 1.0, None),  # no-think, as the authors strip it
        ("<think>\n</think>\n<score> no </score>", 0.0, None),
        (f"<think> {TRACE} </think>\n<score> yes </score>", 1.0, TRACE),  # think mode
        ("<score>YES</score>", 1.0, None),
        ("<score> no </score>\n<score> yes </score>", 1.0, None),  # the authors take the last
    ],
)
def test_parse_33(text, risk, rationale) -> None:
    v = GraniteGuardian(options={"criteria": "violence"}).parse(text, Stage.RESPONSE)
    assert v.ok and v.risk == risk and v.harmful is (risk == 1.0) and v.rationale == rationale
    assert v.categories == (["VIO"] if risk else []) and v.label == ("yes" if risk else "no") + " (violence)"


@pytest.mark.parametrize(
    "text", ["", "yes", "Yes", "<score> maybe </score>", "<score></score>", "<think> still thinking about it",
             "<think>x</think>"]
)
def test_parse_33_malformed(text: str) -> None:
    v = GraniteGuardian().parse(text, Stage.PROMPT)
    assert not v.parse_ok and v.failure is FailureKind.UNPARSEABLE and v.risk == 1.0


@pytest.mark.parametrize(
    ("text", "risk", "ok"),
    [("Yes", 1.0, True), ("No", 0.0, True), (" yes ", 1.0, True),
     ("Yes\n<confidence> High </confidence>", 1.0, True), ("No\n<confidence> Low </confidence>", 0.0, True),
     ("Maybe", 1.0, False), ("", 1.0, False), ("<score> yes </score>", 1.0, False)],
)
def test_parse_legacy(text, risk, ok) -> None:
    v = GraniteGuardian("granite-guardian-3.2-5b").parse(text, Stage.PROMPT)
    assert v.parse_ok is ok and v.risk == risk
    if "confidence" in text:
        assert v.rationale and v.rationale.startswith("confidence: ")


def test_fast_scoring_only_where_documented() -> None:
    assert "no probability method" in (GraniteGuardian().fast_scoring_problem() or "")
    with pytest.raises(NotImplementedError):
        GraniteGuardian().fast_spec(PROMPT)
    g32 = GraniteGuardian("granite-guardian-3.2-5b", options={"criteria": "violence"})
    assert g32.fast_scoring_problem("openai") is None
    spec = g32.fast_spec(PROMPT)
    assert not spec.raw_prefix and spec.score.request.assistant_prefix == "" and "Yes" in spec.score.candidates
    # the authors' get_probabilities: every spelling of yes / no, case-insensitive after strip
    p = {"Yes": 0.2, " yes": 0.1, "No": 0.6}
    r = spec.read(ScoreResult(at_prefix=Distribution(candidates={k: math.log(v) for k, v in p.items()})))
    assert r.risk == pytest.approx(0.3 / 0.9) and r.categories == ["VIO"]
    low = spec.read(ScoreResult(at_prefix=Distribution(candidates={"Yes": math.log(0.05), "No": math.log(0.9)})))
    assert low.risk < 0.2 and low.categories == []


def test_canned_output_round_trips() -> None:
    for gg in (GraniteGuardian(), GraniteGuardian("granite-guardian-3.1-2b")):
        assert gg.parse(gg.canned_output(Stage.PROMPT, harmful=True, risk=1.0), Stage.PROMPT).risk == 1.0
        assert gg.parse(gg.canned_output(Stage.PROMPT, harmful=False, risk=0.0), Stage.PROMPT).risk == 0.0
