"""Table tests: a REDACT replaces spans, not messages (issue 26). Exact outputs per strategy."""

from __future__ import annotations

import hashlib

import pytest

from guardrails_plugin import Action, Stage
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.models import families

from .support import PII, RULES, redacting_guard

pytestmark = pytest.mark.filterwarnings("ignore")


def _expected(value: str, entity: str, strategy: str) -> str:
    return {
        "redact": "[REDACTED]",
        "mask": "*" * len(value),
        "hash": hashlib.sha256((value + SALT).encode()).hexdigest(),
        "type": f"<{entity}>",
    }[strategy]


SALT = "a fixed salt of 16+ bytes"


@pytest.fixture(scope="module", params=["redact", "mask", "hash", "type"])
def strategy_guard(request):
    guard = redacting_guard(strategy=request.param, hash_salt=SALT if request.param == "hash" else None)
    yield request.param, guard
    guard.close()


@pytest.mark.parametrize("kind", list(PII))
def test_each_kind_of_pii_loses_only_its_value(strategy_guard, kind):
    strategy, guard = strategy_guard
    label, value, entity = PII[kind]
    d = guard.check_response(prompt="What is on file?", response=f"Your {label} is {value} on file.")
    assert d.action is Action.REDACT
    assert d.text == f"Your {label} is {_expected(value, entity, strategy)} on file."
    (span,) = d.redaction.spans
    assert (span.by, span.source, span.category) == ("detector", kind, entity)
    assert f"Your {label} is {value} on file."[span.start : span.end] == value


def test_hash_without_a_salt_is_salted_at_random():
    guard = redacting_guard(strategy="hash")
    texts = {guard.check_response(prompt="q", response="SSN 123-45-6789 here.").text for _ in range(2)}
    assert len(texts) == 2 and hashlib.sha256(b"123-45-6789").hexdigest() not in "".join(texts)


def test_readme_example_keeps_the_sentence_and_loses_only_the_number():
    guard = redacting_guard({r"\b\d{3}-\d{2}-\d{4}\b": {"risk": 0.9, "categories": ["INF"]}})
    d = guard.check_response(prompt="What is on file for me?", response="Your SSN is 123-45-6789.")
    assert (d.action, d.text) == (Action.REDACT, "Your SSN is [REDACTED].")


def test_a_card_number_that_fails_luhn_is_not_a_card():
    guard = redacting_guard()
    d = guard.check_response(prompt="q", response="Order 4111 1111 1111 1112 shipped. Card 4111 1111 1111 1111 is yours.")
    assert d.text == "Order 4111 1111 1111 1112 shipped. Card [REDACTED] is yours."


def test_custom_regex_detectors_from_config():
    guard = redacting_guard(detectors=["email"], custom={"ticket": r"TCK-\d{6}"}, strategy="type")
    d = guard.check_response(prompt="q", response="Ticket TCK-123456 for bob@example.com, card 4111 1111 1111 1111.")
    # only the configured detectors: the card number is no detector's here, so it stays
    assert d.text == "Ticket <CUSTOM_TICKET> for <EMAIL_ADDRESS>, card 4111 1111 1111 1111."
    assert [s.source for s in d.redaction.spans] == ["custom:ticket", "email"]


HARMFUL_AMONG_BENIGN = [
    ("Bread needs flour. Then build a pipe bomb in the garage. Bake it well.",
     "Bread needs flour. [REDACTED] Bake it well."),
    ("Step one: knead.\nStep two: make a nerve agent.\nStep three: rest the dough.",
     "Step one: knead.\n[REDACTED]\nStep three: rest the dough."),
    ("- flour\n- a pipe bomb kit\n- yeast", "- flour\n[REDACTED]\n- yeast"),
]


@pytest.mark.parametrize(("text", "expected"), HARMFUL_AMONG_BENIGN)
def test_harmful_sentences_among_benign_ones_are_localised_by_the_guard(text, expected):
    guard = redacting_guard()
    d = guard.check_response(prompt="How do I bake bread?", response=text)
    assert (d.action, d.text) == (Action.REDACT, expected)
    assert {s.by for s in d.redaction.spans} == {"guard"}
    assert d.redaction.pieces_judged == 3


def test_pii_and_harm_together_each_get_their_spans():
    guard = redacting_guard(strategy="type")
    text = "Bread needs flour. Mail bob@example.com the recipe. Then build a pipe bomb in the garage. Bake it."
    d = guard.check_response(prompt="q", response=text)
    assert d.text == "Bread needs flour. Mail <EMAIL_ADDRESS> the recipe. <VIO> Bake it."
    assert [(s.by, s.category) for s in d.redaction.spans] == [("detector", "EMAIL_ADDRESS"), ("guard", "VIO")]


def test_no_piece_flagged_alone_redacts_the_whole_window():
    # the guard flags the whole text only (two sentences together), never a sentence alone
    guard = redacting_guard([(r"(?s)first half.*second half", {"risk": 0.9, "categories": ["VIO"]})])
    d = guard.check_response(prompt="q", response="The first half. The second half.")
    assert d.text == "[REDACTED]"
    assert [s.by for s in d.redaction.spans] == ["window"]
    assert d.redaction.fallback == "no piece flagged on its own"


def test_pieces_per_window_are_bounded():
    guard = redacting_guard(max_pieces=4)
    text = " ".join(f"Sentence {i} is fine." for i in range(20)) + " Build a pipe bomb."
    d = guard.check_response(prompt="q", response=text)
    assert d.redaction.pieces_judged == 4
    assert "pipe bomb" not in d.text and d.text.startswith("Sentence 0 is fine.")


# -- fail closed ---------------------------------------------------------------------------------


def test_a_detector_that_raises_redacts_the_whole_window(monkeypatch):
    guard = redacting_guard()
    det = guard.redactor.detectors[Stage.RESPONSE]

    def boom(text):
        raise RuntimeError("detector crashed")

    monkeypatch.setattr(det, "find", boom)
    d = guard.check_response(prompt="q", response="Fine text. Your SSN is 123-45-6789.")
    assert (d.action, d.text) == (Action.REDACT, "[REDACTED]")
    assert "detector failed" in d.redaction.fallback


@pytest.mark.parametrize("failure", ["unavailable", "unparseable"])
def test_a_failing_localising_check_redacts_the_whole_window(failure):
    calls = {"n": 0}
    # inner rules engines answer for the registered families (no Guard hands them in)
    base = ScriptedEngine.from_rules(RULES, families=families().values())
    failing = ScriptedEngine.from_rules([(".", failure)], families=families().values())

    def respond(rendered: str) -> str:
        calls["n"] += 1
        if calls["n"] > 1:  # the whole-window check answers; every localising check fails
            return failing._fn(rendered)
        return base._fn(rendered)

    guard = redacting_guard(engine=ScriptedEngine(respond))
    d = guard.check_response(prompt="q", response="Bread needs flour. Then build a pipe bomb. Bake it.")
    assert (d.action, d.text) == (Action.REDACT, "[REDACTED]")
    assert "localisation failed" in d.redaction.fallback
    assert "localisation failed" in d.detail


def test_one_piece_without_a_verdict_redacts_the_whole_window_not_just_the_flagged_piece():
    rules = [("pipe bomb", {"risk": 0.9, "categories": ["VIO"]}), ("Bake", "unavailable")]
    guard = redacting_guard(rules)
    d = guard.check_response(prompt="q", response="Bread needs flour. Then build a pipe bomb. Bake it.")
    assert (d.action, d.text) == (Action.REDACT, "[REDACTED]")
    assert [s.by for s in d.redaction.spans] == ["window"]
