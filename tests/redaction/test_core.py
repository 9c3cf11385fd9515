"""The redaction core without Presidio, the vault, and the pure span helpers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from guardrails_plugin import Action, GuardConfig, Stage
from guardrails_plugin.errors import GuardConfigError
from guardrails_plugin.redaction import redact_slice, split_pieces
from guardrails_plugin.types import RedactedSpan

from .support import redacting_guard

pytestmark = pytest.mark.filterwarnings("ignore")

_NO_PRESIDIO = textwrap.dedent("""
    import sys
    for m in ("presidio_analyzer", "presidio_anonymizer", "spacy"):
        sys.modules[m] = None  # import fails as if not installed
    import guardrails_plugin.redaction.detectors as det
    det.presidio_available = lambda: False
    sys.path.insert(0, "tests")
    from redaction.support import redacting_guard
    from guardrails_plugin.errors import GuardConfigError
    g = redacting_guard()  # detectors: auto -> none; localisation still narrows harm
    d = g.check_response(prompt="q", response="Bread needs flour. Then build a pipe bomb. Bake it.")
    print(d.text)
    try:
        redacting_guard(detectors=["email"])
    except GuardConfigError as exc:
        print("error:", exc)
""")


def test_the_core_runs_without_presidio_and_a_listed_detector_names_the_extra():
    out = subprocess.run([sys.executable, "-c", _NO_PRESIDIO], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Bread needs flour. [REDACTED] Bake it."
    assert "pip install 'guardrails-plugin[redaction]'" in lines[1] and "['email']" in lines[1]


def test_unknown_detector_is_a_config_error():
    with pytest.raises(GuardConfigError, match="unknown detector"):
        GuardConfig.build(stages={"response": {"redaction": {"detectors": ["e-mail"]}}})


def test_the_vault_gives_the_model_tokens_and_restores_values_in_its_answer():
    guard = redacting_guard(stage="prompt", vault=True)
    d = guard.check_prompt("Write to bob@example.com and to amy@example.org, again bob@example.com.")
    assert d.action is Action.REDACT
    assert d.text == "Write to <EMAIL_ADDRESS_1> and to <EMAIL_ADDRESS_2>, again <EMAIL_ADDRESS_1>."
    assert d.vault.restore("Sent to <EMAIL_ADDRESS_2>.") == "Sent to amy@example.org."
    # the values are in no serialised form of the decision (audit records, HTTP bodies)
    assert "bob@example.com" not in d.model_dump_json()
    r = d.vault.restorer()
    streamed = "".join(r.feed(x) for x in ["Sent to <EMAIL_", "ADDRESS_1", ">, done <"]) + r.flush()
    assert streamed == "Sent to bob@example.com, done <"


def test_redact_slice_writes_a_span_where_it_starts():
    text = "card 4111 1111 1111 1111 ok"
    spans = [RedactedSpan(start=5, end=24, by="detector", source="credit_card", category="CREDIT_CARD")]
    parts = [redact_slice(text, spans, a, b, "redact", "[X]") for a, b in [(0, 9), (9, 14), (14, 27)]]
    assert parts == ["card [X]", "", " ok"]


def test_split_pieces_sentences_and_lines():
    text = "One. Two! Three?\nFour"
    assert [text[s:e] for s, e in split_pieces(text, 16)] == ["One. ", "Two! ", "Three?\n", "Four"]
    code = "x = 1\ny = 2\nprint(x)"
    assert [code[s:e] for s, e in split_pieces(code, 16)] == ["x = 1\n", "y = 2\n", "print(x)"]
    many = " ".join(f"S{i}." for i in range(40))
    pieces = split_pieces(many, 5)
    assert len(pieces) == 5 and pieces[0][0] == 0 and pieces[-1][1] == len(many)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))


def test_a_stage_that_cannot_redact_holds_nothing_back_for_detectors():
    from guardrails_plugin import Guard
    from guardrails_plugin.engines import ScriptedEngine

    plain = Guard(GuardConfig(), engine=ScriptedEngine(["safe"]))
    assert plain.redactor.detectors == {} and plain.redactor.hold_chars(Stage.RESPONSE) == 0
    assert redacting_guard().redactor.hold_chars(Stage.RESPONSE) == 256  # the url detector's longest match
    assert redacting_guard(detectors=["ssn"]).redactor.hold_chars(Stage.RESPONSE) == 11
