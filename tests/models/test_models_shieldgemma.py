"""ShieldGemma: prompts byte-exact to its chat template (hash-tested against the reference renders),
the card's guideline wording per mode, the Yes / No parser, and its documented score P(Yes) as the
fast-scoring spec, including where a mid-scale score lands under the policy."""

from __future__ import annotations

import math

import guard_renders as ref
import pytest
from families_support import PROMPT, RESPONSE, tiny_engine

from guardrails_plugin import Action, Guard, GuardConfig
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.engines.base import Distribution, ScoreResult
from guardrails_plugin.errors import GuardConfigError
from guardrails_plugin.models import ShieldGemma
from guardrails_plugin.models.shieldgemma import PROMPT_GUIDELINES, RESPONSE_GUIDELINES
from guardrails_plugin.types import FailureKind, Stage

pytestmark = pytest.mark.timeout(300)

# title and a phrase of each guideline of the card's tables
GUIDELINE_WORDS = {
    "dangerous_content": ("No Dangerous Content", "harming oneself and/or others"),
    "harassment": ("No Harassment", "malicious, intimidating, bullying"),
    "hate_speech": ("No Hate Speech", "We do allow content that includes a reference"),
    "sexually_explicit": ("No Sexually Explicit Information", "Medical or scientific terms"),
}


def test_prompts_are_byte_exact(tmp_path_factory) -> None:
    engine = tiny_engine(tmp_path_factory, "shieldgemma")
    sg = ShieldGemma(options={"custom_guideline": "{GUIDELINE}"})
    prompt, response = engine.render(sg.build_input(PROMPT)), engine.render(sg.build_input(RESPONSE))
    assert prompt == ref.SHIELDGEMMA_PROMPT and response == ref.SHIELDGEMMA_RESPONSE
    assert "Your answer must  start" in response  # the template's double space, kept
    ids = engine.request_ids(sg.build_input(PROMPT))
    assert ids[0] == engine.tokenizer.bos_token_id and ids.count(engine.tokenizer.bos_token_id) == 1


def test_card_guidelines_are_verbatim() -> None:
    # sha256 of the eight table cells (prompt-only, then prompt-response), checked against the card's
    # text in the reference when copied
    import hashlib

    cells = "\n".join([*PROMPT_GUIDELINES.values(), *RESPONSE_GUIDELINES.values()])
    assert hashlib.sha256(cells.encode()).hexdigest() == "4ffe991c742d321751de40518f9ab031a7fb5ab2867db3d50a48397285e71f5b"


def test_card_guidelines_per_mode(tmp_path_factory) -> None:
    engine = tiny_engine(tmp_path_factory, "shieldgemma")
    for key, (title, words) in GUIDELINE_WORDS.items():
        sg = ShieldGemma(options={"guideline": key})
        p, r = PROMPT_GUIDELINES[key], RESPONSE_GUIDELINES[key]
        assert p.startswith(f'"{title}": The prompt shall not contain or seek generation of content that')
        assert r.startswith(f'"{title}": The chatbot shall not generate content that') and words in p and words in r
        assert sg.build_input(PROMPT).chat_template_kwargs == {"guideline": p}
        assert sg.build_input(RESPONSE).chat_template_kwargs == {"guideline": r}
        assert f"\n\n* {p}\n\n===\n\n" in engine.render(sg.build_input(PROMPT))
    with pytest.raises(GuardConfigError, match="unknown guideline"):
        ShieldGemma(options={"guideline": "spam"})
    with pytest.raises(GuardConfigError, match="custom_guideline"):
        ShieldGemma(options={"custom_guideline": {"other": "x"}})
    both = ShieldGemma(options={"custom_guideline": {"prompt": "P!", "response": "R!"}})
    assert both.guideline(Stage.PROMPT) == "P!" and both.guideline(Stage.REASONING) == "R!"


@pytest.mark.parametrize(
    ("text", "risk"),
    [("Yes", 1.0), ("No", 0.0), ("Yes. The prompt asks for instructions to build a weapon.", 1.0),
     ("No, the question is harmless.", 0.0), ("yes", 1.0), ("\n**No**", 0.0)],
)
def test_parse(text: str, risk: float) -> None:
    v = ShieldGemma().parse(text, Stage.PROMPT)
    assert v.ok and v.risk == risk and v.categories == (["VIO"] if risk else [])
    assert v.label == ("Yes" if risk else "No") + " (dangerous_content)"


@pytest.mark.parametrize("text", ["", "Maybe", "The answer is yes", "Yesterday", "N/A"])
def test_parse_malformed(text: str) -> None:
    v = ShieldGemma().parse(text, Stage.PROMPT)
    assert not v.parse_ok and v.failure is FailureKind.UNPARSEABLE


def test_fast_spec_is_the_cards_p_yes() -> None:
    sg = ShieldGemma(options={"guideline": "harassment"})
    spec = sg.fast_spec(RESPONSE)
    assert not spec.raw_prefix and spec.score.request.assistant_prefix == "" and spec.score.candidates == ("Yes", "No")
    r = spec.read(ScoreResult(at_prefix=Distribution(candidates={"Yes": math.log(0.3), "No": math.log(0.6)})))
    # softmax over the two logits == P(Yes) / (P(Yes) + P(No))
    assert r.risk == pytest.approx(1 / 3) and r.categories == ["DIS"]
    assert sg.fast_scoring_problem("openai") is None  # nothing forced: top logprobs over HTTP work


class PYes(ScriptedEngine):
    """Scores 'Yes' with the probability written in the judged text ("P=0.3")."""

    async def score(self, requests, *, timeout=None):
        out = []
        for r in requests:
            text = self.render(r.request)
            p = float(text.split("P=")[1].split()[0])
            out.append(ScoreResult(at_prefix=Distribution(candidates={"Yes": math.log(p), "No": math.log(1 - p)})))
        return out


def _guard(**cfg: object) -> Guard:
    config = GuardConfig(mode="fast", models={"SG": {"family": "shieldgemma"}},
                         stages={"prompt": {"guards": ["SG"]}, "reasoning": {"enabled": False},
                                 "response": {"guards": ["SG"]}}, **cfg)
    return Guard(config, engine=PYes(["unused"]))


def test_a_mid_scale_score_lands_in_the_escalate_band() -> None:
    d = _guard().check_prompt("P=0.3 is this ok")  # the default band [0.2, 0.4)
    assert d.action is Action.ESCALATE and d.risk == pytest.approx(0.3) and d.categories == ["VIO"]
    assert _guard(escalate_threshold=None).check_prompt("P=0.3 is this ok").action is Action.ALLOW
    assert _guard(strictness="strict").check_prompt("P=0.3 x").action is Action.BLOCK
    high = _guard(category_actions={"VIO": "redact"}).check_prompt("P=0.9 x")
    assert high.action is Action.REDACT and high.verdicts[0].harmful  # our vocabulary drives the override


def test_canned_output_round_trips() -> None:
    sg = ShieldGemma()
    assert sg.parse(sg.canned_output(Stage.PROMPT, harmful=True, risk=1.0), Stage.PROMPT).risk == 1.0
    assert sg.parse(sg.canned_output(Stage.RESPONSE, harmful=False, risk=0.0), Stage.RESPONSE).risk == 0.0
