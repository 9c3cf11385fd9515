"""Track (sans-IO): which check falls due, what a verdict covers, what may be released.

No event loop and no guard: the test is the owner, holding each Check it is handed and completing
it with a Decision of its choosing, in whatever order the case needs (a late, older check included).
"""

from __future__ import annotations

import pytest

from guardrails_plugin import Action, Decision, Stage
from guardrails_plugin.stream.track import Check, MonitorStats, Track, stops
from guardrails_plugin.types import RedactedSpan, Redaction

R = Stage.REASONING


def words(n: int, start: int = 0) -> str:
    """``n`` one-token words: ``w0 w1 ...`` (approx_tokens counts one token each)."""
    return "".join(f"w{i} " for i in range(start, start + n))


def decide(action: Action, *spans: tuple[int, int], hold: bool = False) -> Decision:
    redaction = Redaction(spans=[RedactedSpan(start=a, end=b, by="detector", source="email") for a, b in spans])
    return Decision(action=action, stage=R, text="", reason=action.value, hold=hold,
                    redaction=redaction if spans else None)


ALLOW, BLOCK = decide(Action.ALLOW), decide(Action.BLOCK)


def span_bounds(t: Track) -> list[tuple[int, int]]:
    return [(s.start, s.end) for s in t.spans]


# -- when a check falls due ------------------------------------------------------------------------

def test_a_check_falls_due_every_n_tokens_and_snapshots_its_prefix() -> None:
    t = Track(R, every=4, hold_back=False)
    assert t.add(words(3)) is None
    check = t.add(words(1, 3))
    assert isinstance(check, Check) and not check.final
    assert (check.tokens, check.chars, check.text) == (4, len(words(4)), words(4))
    assert t.inflight is check and t.running == 1 and t.checks_run == 1
    t.add(words(2, 4))
    assert check.text == words(4)  # the check judges the prefix it was started on, not what came after


def test_the_interval_counts_from_the_last_due_check_not_from_zero() -> None:
    t = Track(R, every=3, hold_back=False)
    first = t.add(words(3))
    assert t.done(first, ALLOW) is None
    assert t.add(words(2, 3)) is None  # 2 tokens since the last check
    second = t.add(words(1, 5))
    assert second is not None and second.tokens == 6


@pytest.mark.parametrize("deltas", [["one", " two\n\nthree"], ["one\n", "\ntwo"]], ids=["whole", "split"])
def test_a_paragraph_end_is_due_before_the_interval(deltas: list[str]) -> None:
    t = Track(R, every=100, hold_back=False)
    assert t.add(deltas[0]) is None
    assert t.add(deltas[1]) is not None
    off = Track(R, every=100, hold_back=False, paragraphs=False)
    assert [off.add(d) for d in deltas] == [None, None]


def test_a_paragraph_end_with_no_new_token_since_the_last_check_is_not_due_again() -> None:
    t = Track(R, every=2, hold_back=False)
    t.done(t.add("a b"), ALLOW)
    assert t.add("\n\n") is None


def test_a_held_back_track_checks_its_first_delta_at_once() -> None:
    """Nothing of a held-back text shows before a check: its first must not wait an interval."""
    held = Track(R, every=100, hold_back=True)
    first = held.add("hi")
    assert first is not None and first.text == "hi"
    held.done(first, ALLOW)
    assert held.add(" there") is None  # only the first delta
    assert Track(R, every=100, hold_back=False).add("hi") is None


# -- coalescing ------------------------------------------------------------------------------------

def test_checks_due_while_one_is_in_flight_coalesce_into_one_of_the_newest_prefix() -> None:
    t = Track(R, every=2, hold_back=False, paragraphs=False)
    first = t.add(words(2))
    assert [t.add(words(2, i)) for i in (2, 4, 6)] == [None, None, None]
    assert t.checks_coalesced == 2  # three fell due behind the one in flight: one survives
    follow = t.done(first, ALLOW)
    assert follow is not None and (follow.tokens, follow.text) == (8, words(8))
    assert t.covered == first.chars  # the first verdict covers only what it judged
    assert t.done(follow, ALLOW) is None and t.covered == t.chars and t.checks_run == 2


def test_a_verdict_covers_only_the_prefix_it_judged() -> None:
    """Text that arrived while a check ran is not covered by it (hold-back would release it unjudged)."""
    t = Track(R, every=100, hold_back=True)
    check = t.add("a ")
    t.add("b c d ")
    t.done(check, ALLOW)
    assert t.covered == 2 and t.safe() == 2


# -- the end ---------------------------------------------------------------------------------------

def test_close_asks_for_no_end_check_when_a_completed_check_covers_everything() -> None:
    t = Track(R, every=2, hold_back=False)
    t.done(t.add(words(2)), ALLOW)
    assert t.close() is None and t.settled and t.outcome is ALLOW


def test_close_asks_for_no_end_check_when_the_one_in_flight_covers_everything() -> None:
    t = Track(R, every=2, hold_back=False)
    check = t.add(words(2))
    assert t.close() is None
    assert not t.settled  # its verdict is not in yet
    assert t.done(check, BLOCK) is None
    assert t.settled and t.outcome is BLOCK


def test_the_end_check_starts_beside_an_older_check_and_the_older_verdict_still_counts() -> None:
    t = Track(R, every=2, hold_back=False)
    older = t.add(words(2))
    t.add("w2 ")  # not due: one token
    end = t.close()
    assert end is not None and end.final and end.chars == t.chars
    assert t.running == 2 and t.inflight is end
    assert t.done(end, ALLOW) is None
    assert not t.settled  # the older check is still running
    t.done(older, BLOCK)  # lands late, on a prefix the end check already passed
    assert t.settled and t.decision is BLOCK and t.outcome is BLOCK


def test_close_drops_a_coalesced_check_the_end_check_replaces() -> None:
    t = Track(R, every=2, hold_back=False)
    first = t.add(words(2))
    t.add(words(2, 2))  # due behind the first: pending
    end = t.close()
    assert end is not None and end.final
    assert t.done(first, ALLOW) is None  # no follow-up: the end check covers it
    assert t.done(end, ALLOW) is None and t.checks_run == 2 and t.settled


def test_an_empty_closed_track_still_asks_for_a_verdict() -> None:
    """Its outcome must come from a check, never from the absence of one."""
    t = Track(R, every=2, hold_back=True)
    end = t.close()
    assert end is not None and end.final and end.text == ""
    assert t.outcome is None and not t.settled
    t.done(end, ALLOW)
    assert t.settled and t.outcome is ALLOW


# -- stops -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("decision", "stop"), [
    (decide(Action.BLOCK), True),
    (decide(Action.REDACT), True),
    (decide(Action.REDACT, (0, 1)), True),
    (decide(Action.ESCALATE, hold=True), True),
    (decide(Action.ESCALATE, hold=False), False),
    (decide(Action.ALLOW), False),
])
def test_the_stop_rule(decision: Decision, stop: bool) -> None:
    assert stops(decision) is stop
    t = Track(R, every=1, hold_back=False)
    t.done(t.add("x "), decision)
    assert (t.decision is decision) is stop
    assert t.covered == (0 if stop else 2)


def test_a_block_stops_the_track_and_reports_its_detection_lag() -> None:
    t = Track(R, every=4, hold_back=False, paragraphs=False)
    check = t.add(words(4))
    t.release(t.chars)  # no hold-back: the owner lets everything fed go downstream
    t.add(words(6, 4))  # due behind the check in flight
    t.release(t.chars)
    assert t.done(check, BLOCK) is None  # no follow-up check after a stop
    assert (t.decision, t.abort_offset, t.detection_lag) == (BLOCK, 4, 6)
    assert t.close() is None and t.settled
    stats = t.stats
    assert isinstance(stats, MonitorStats)
    assert (stats.aborted, stats.abort_offset, stats.detection_lag_tokens) == (True, 4, 6)
    assert (stats.tokens_fed, stats.tokens_released, stats.tokens_checked, stats.checks_run) == (10, 10, 4, 1)


def test_a_later_allow_never_lifts_a_stop() -> None:
    t = Track(R, every=2, hold_back=True)
    older = t.add(words(2))
    t.add("w2 ")
    end = t.close()
    t.done(older, BLOCK)
    t.done(end, ALLOW)
    assert t.decision is BLOCK and t.outcome is BLOCK and t.covered == 0


def test_a_redact_stops_a_track_that_cannot_edit_what_it_releases() -> None:
    not_held = Track(R, every=1, hold_back=False, redacts=True)  # released text cannot be edited
    assert not not_held.redacts
    not_held.done(not_held.add("mail a@b.c "), decide(Action.REDACT, (5, 10)))
    assert not_held.decision is not None and not not_held.spans
    no_spans = Track(R, every=1, hold_back=True, redacts=True)  # a REDACT without spans says nothing to edit
    no_spans.done(no_spans.add("mail a@b.c "), decide(Action.REDACT))
    assert no_spans.decision is not None and no_spans.covered == 0


# -- redaction on a held-back track ------------------------------------------------------------------

def test_a_redact_on_a_redacting_track_keeps_it_going_with_its_spans() -> None:
    text = "mail a@b.co now "
    t = Track(R, every=100, hold_back=True, redacts=True)
    redact = decide(Action.REDACT, (5, 11))
    assert t.done(t.add(text), redact) is None
    assert t.decision is None and t.redaction is redact
    assert span_bounds(t) == [(5, 11)] and t.covered == len(text)
    assert t.safe() == len(text)
    assert t.redacted(0, len(text), "redact", "[REDACTED]") == "mail [REDACTED] now "
    assert t.redacted(8, len(text), "redact", "[X]") == " now "  # the span began before the slice
    assert t.add("then a bomb ") is None  # not due yet
    assert t.safe() == len(text)  # the new text is not covered by the REDACT
    end = t.close()
    assert end is not None and end.chars == t.chars  # later text is still judged
    t.done(end, BLOCK)
    assert t.decision is BLOCK


def test_a_newer_redact_replaces_older_spans_over_unreleased_text_but_keeps_released_ones() -> None:
    t = Track(R, every=2, hold_back=True, redacts=True, paragraphs=False)
    first = t.add("id 1234 ")
    t.add("5678 x ")  # due behind the first
    follow = t.done(first, decide(Action.REDACT, (0, 2), (3, 8)))  # "id" and a half-streamed number
    assert span_bounds(t) == [(0, 2), (3, 8)] and follow is not None
    t.release(3)  # "id " went out (redacted)
    t.done(follow, decide(Action.REDACT, (3, 12)))  # the whole number, now that it is complete
    assert span_bounds(t) == [(0, 2), (3, 12)]


def test_an_older_redact_landing_late_does_not_override_a_newer_ones_spans() -> None:
    t = Track(R, every=100, hold_back=True, redacts=True)
    older = t.add("id 1234 ")
    t.add("5678 x ")
    end = t.close()
    t.done(end, decide(Action.REDACT, (3, 12)))
    t.done(older, decide(Action.REDACT, (0, 8)))  # judged a subset of the newer check's text
    assert span_bounds(t) == [(3, 12)] and t.settled and t.decision is None


# -- what may be released ----------------------------------------------------------------------------

def test_hold_chars_keeps_the_tail_back_until_the_end_check() -> None:
    t = Track(R, every=100, hold_back=True, hold_chars=4)
    t.done(t.add("abcdefghij"), ALLOW)
    assert t.safe() == 6
    assert t.close() is None and t.settled  # the check covered everything
    assert t.safe() == 10
    assert Track(R, every=1, hold_back=False, hold_chars=4).hold_chars == 0  # nothing is held without hold-back


def test_a_release_never_cuts_a_span_or_enters_one_that_reaches_the_judged_end() -> None:
    text = "card 4111 1111 1111 "  # 20 chars
    cut = Track(R, every=100, hold_back=True, redacts=True, hold_chars=4)
    cut.done(cut.add(text), decide(Action.REDACT, (14, 18)))
    assert cut.safe() == 14  # 20 - 4 = 16 falls inside the span: back to its start
    growing = Track(R, every=100, hold_back=True, redacts=True)
    growing.done(growing.add(text), decide(Action.REDACT, (5, 20)))
    assert growing.safe() == 5  # the value may still be growing: nothing of it yet
    assert growing.close() is None  # the check covered everything: no more text can come
    assert growing.settled and growing.safe() == 20


def test_safe_never_moves_back_behind_what_was_released() -> None:
    t = Track(R, every=2, hold_back=True, redacts=True, hold_chars=4, paragraphs=False)
    t.done(t.add("abcdefghij"), ALLOW)
    t.release(t.safe())  # 10 - 4: "abcdef" went out
    assert t.released == 6
    check = t.add("k l ")
    t.done(check, decide(Action.REDACT, (5, 12)))  # a span the earlier release already entered
    assert t.safe() == 6  # not 5: what went out stays out, and nothing more of the span follows


def test_tokens_at_counts_whole_deltas_within_a_prefix() -> None:
    t = Track(R, every=100, hold_back=False)
    t.add("a b ")
    t.add("c d ")
    assert [t.tokens_at(n) for n in (0, 3, 4, 7, 8, 99)] == [0, 0, 2, 2, 4, 4]


def test_a_track_joins_its_deltas_and_names_its_session() -> None:
    t = Track(R, every=100, hold_back=False, session_id="s1")
    for d in ("ab", "c", "de"):
        t.add(d)
    assert t.text == "abcde" and t.chars == 5 and t.session_id == "s1"
    assert Track(R, every=1, hold_back=False).session_id != Track(R, every=1, hold_back=False).session_id
