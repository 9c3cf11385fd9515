"""Streams keep flowing (issue 26): a REDACT in a held-back answer edits what is released from then
on; a split value is never partly released; harmful text still stops; tool calls are dropped."""

from __future__ import annotations

import pytest

from guardrails_plugin import Action
from guardrails_plugin.stream import Edited, Part, PartKind
from guardrails_plugin.stream.drive import TurnRunner, drive

from .support import redacting_guard

pytestmark = pytest.mark.filterwarnings("ignore")
A, T = PartKind.ANSWER, PartKind.TOOL_CALL


def _run(guard, items, *, redact_edits=True, **kw):
    """Drive ``items`` (strings: answer deltas; ("tool", text): tool-call deltas) through a turn;
    returns (what the client saw, in order, as text; the runner)."""
    runner = TurnRunner.of(guard.stream_checks(), "What is on file?", redact_edits=redact_edits,
                           check_every_tokens=2, **kw)

    def parts(item):
        return [Part(T, item[1])] if isinstance(item, tuple) else [Part(A, item)]

    shown: list[str] = []
    for out in drive(runner, iter(items), parts):
        ps = out.parts if isinstance(out, Edited) else parts(out)
        shown.append("".join(p.text for p in ps))
    return shown, runner


CARD_SPLIT = ["Hello! Your card is 4111 11", "11 1111 ", "1111 and it ", "expires soon. ", "Thanks for asking."]


def test_a_card_split_over_three_deltas_is_never_partly_shown_and_the_rest_flows():
    guard = redacting_guard()
    shown, runner = _run(guard, CARD_SPLIT)
    assert runner.stop is None  # the stream went on
    assert "".join(shown) == "Hello! Your card is [REDACTED] and it expires soon. Thanks for asking."
    # no prefix of the card number ever left, in any delta
    for piece in shown:
        assert "4111" not in piece and "1111" not in piece
    answer = runner.turn.answer
    assert [(s.source, s.start, s.end) for s in answer.spans] == [("credit_card", 20, 39)]


def test_without_edits_the_integration_gets_the_old_stop():
    guard = redacting_guard()
    shown, runner = _run(guard, CARD_SPLIT, redact_edits=False)
    assert runner.stop is not None and runner.stop.action is Action.REDACT
    assert "4111" not in "".join(shown)


def test_harmful_text_after_a_redaction_still_blocks():
    guard = redacting_guard(rules=[(r"pipe bomb", {"risk": 1.0, "categories": ["ILG"]}), (r"\d{4} \d{4}", {"risk": 0.9, "categories": ["INF"]})])
    items = ["Card 4111 1111 ", "1111 1111 on file. ", "Now, a pipe bomb ", "is built by ", "more words here."]
    shown, runner = _run(guard, items)
    assert runner.stop is not None and runner.stop.action is Action.BLOCK
    text = "".join(shown)
    assert "pipe bomb" not in text and "4111" not in text


def test_benign_text_is_whole_and_released_text_is_never_rewritten():
    guard = redacting_guard()
    items = ["The weather is fine today. ", "It may rain later. ", "Mail bob@exa", "mple.com for more. ", "Bye."]
    shown, runner = _run(guard, items)
    assert "".join(shown) == "The weather is fine today. It may rain later. Mail [REDACTED] for more. Bye."
    assert runner.turn.released_text(runner.turn.answer.stage) == "".join(shown)


def test_a_tool_call_whose_arguments_are_redacted_is_dropped_and_the_turn_says_so():
    guard = redacting_guard()
    items = ["Sending now. ", ("tool", '{"to": "bob@'), ("tool", 'example.com"}')]
    shown, runner = _run(guard, items)
    assert runner.stop is None
    assert "".join(shown) == "Sending now. "
    assert len(runner.turn.dropped) == 2
    assert runner.turn.notes == ["a tool call was dropped: a redaction touched its arguments"]


def test_a_tool_call_untouched_by_the_redaction_runs_as_it_came():
    guard = redacting_guard()
    items = ["Card 4111 1111 1111 1111 noted. ", ("tool", '{"city": "Paris"}')]
    shown, runner = _run(guard, items)
    assert shown[-1] == '{"city": "Paris"}' and runner.turn.dropped == []
    assert "4111" not in "".join(shown)


def test_opting_in_runs_the_tool_call_with_edited_arguments():
    guard = redacting_guard(tool_calls="edit")
    items = ["Sending now. ", ("tool", '{"to": "bob@example.com"}')]
    shown, _ = _run(guard, items)
    assert shown[-1] == '{"to": "[REDACTED]"}'


def _step(guard, items, **kw):
    """The sans-IO turn guard with each check run to its verdict before the next delta arrives (the
    guard keeps up), so every release point is exercised. Returns what went out after each delta."""
    from guardrails_plugin.stream import TurnGuard

    turn = TurnGuard(guard.config, "What is on file?", redact_edits=True, check_every_tokens=2,
                     hold_chars=guard.redactor.hold_chars, **kw)
    shown: list[str] = []

    def run(checks):
        for c in checks:
            run(turn.complete(c, guard.check(turn.request(c))))

    for i, item in enumerate([*items, None]):
        run(turn.feed(item, [Part(A, item)]) if item is not None else turn.end())
        out = turn.release()
        shown.append("".join(p.text for x in out for p in (x.parts if isinstance(x, Edited) else [Part(A, x)])))
        assert turn.stop is None, i
    return shown


def test_no_prefix_of_a_split_value_leaves_even_when_every_check_lands_at_once():
    shown = _step(redacting_guard(detectors=["credit_card"]), CARD_SPLIT)
    assert "".join(shown) == "Hello! Your card is [REDACTED] and it expires soon. Thanks for asking."
    for piece in shown:  # a released "4111 11" (or its sentence redacted around it) would show here
        assert "4111" not in piece and "11 1111" not in piece
