"""Closed windows of a streamed text are judged once (judged.py, runner.py): per-check guard work is
bounded by the window budget, harm anywhere in a long trace is still caught, the memory is exact
(same stream, window, text and context) and forgets a stream when it ends, and the overlap rule
holds on both sides of its limit, streamed and one-shot alike.

Guards are ScriptedEngines that call a thought harmful iff it contains a marker; every count below
comes from what the engine was asked, never from timing."""

from __future__ import annotations

import pytest
from langchain_support import _RS_THOUGHT, MARKER, filler, marker_responder

from guardrails_plugin import Action, Guard, GuardConfig, Stage
from guardrails_plugin.config import GuardModelConfig
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.stream.extract import approx_tokens
from guardrails_plugin.windowing import split_windows

pytestmark = pytest.mark.timeout(120)

RS = "ReasoningShield-1B"


class CountingEngine(ScriptedEngine):
    """A marker guard that records each call's judged windows (the thought of each prompt)."""

    def __init__(self, marker: str = MARKER, fail_first: int = 0):
        super().__init__(marker_responder(marker))
        self.batches: list[list[str]] = []
        self._fail = fail_first

    async def generate(self, requests, *, timeout=None):
        if self._fail:
            self._fail -= 1
            raise RuntimeError("guard replica restarting")
        out = await super().generate(requests, timeout=timeout)
        self.batches.append([_RS_THOUGHT.search(p).group(1) for p in self.prompts[-len(requests):]])
        return out

    @property
    def judged(self) -> list[str]:
        return [t for b in self.batches for t in b]


def make_guard(max_chars: int, overlap: int, marker: str = MARKER, **cfg) -> tuple[Guard, CountingEngine]:
    engine = CountingEngine(marker, fail_first=cfg.pop("fail_first", 0))
    config = GuardConfig(models={RS: GuardModelConfig(family="reasoningshield", max_input_chars=max_chars,
                                                      window_overlap_chars=overlap)}, **cfg)
    return Guard(config, engine=engine), engine


def stream(guard: Guard, text: str, every: int = 16, step: int = 1):
    """Feed ``text`` word by word (``step`` words a delta), each check finished before the next
    delta (a guard faster than the decoder), then close."""
    mon = guard.reasoning_monitor(query="q", check_every_tokens=every, check_paragraphs=False)
    words = text.split(" ")
    for i in range(0, len(words), step):
        piece = " ".join(words[i : i + step]) + (" " if i + step < len(words) else "")
        mon.feed(piece)
        view = mon.check_in_flight
        if view is not None:
            view.result(timeout=30)
        if mon.aborted:
            break
    return mon, mon.close(timeout=60)


def test_each_closed_window_is_judged_once_and_a_check_judges_at_most_two_windows():
    guard, engine = make_guard(400, 60)
    text = filler(600)  # ~6,000 chars: about 17 windows
    mon, d = stream(guard, text)
    assert d.action is Action.ALLOW and d.failure is None
    spans = split_windows(text, 400, 60)
    assert len(spans) > 10
    judged = engine.judged
    for s, e in spans[:-1]:  # every closed window's final text judged exactly once
        assert judged.count(text[s:e]) == 1, (s, e)
    assert text[spans[-1][0] :] in judged  # the last window judged in full by the end
    assert max(len(b) for b in engine.batches) <= 2  # the open window, plus one that just closed
    assert max(len(t) for t in judged) <= 400
    # the final decision still carries a verdict per window, the closed ones from memory
    assert [v.window for v in d.verdicts] == spans
    assert sum(v.reused for v in d.verdicts) == len(spans) - 1


def _cost_per_char(n_words: int) -> float:
    guard, engine = make_guard(400, 60)
    text = filler(n_words)
    stream(guard, text, every=16, step=4)
    return sum(len(t) for t in engine.judged) / len(text)


def test_guard_work_per_trace_character_does_not_grow_with_the_trace():
    short, long = _cost_per_char(1_500), _cost_per_char(6_000)  # ~4 and ~17 windows
    assert long <= 1.3 * short, (short, long)  # linear: re-judging every window grows ~4x here


@pytest.mark.parametrize("where", [0.05, 0.5, 0.97])
def test_harm_early_middle_or_late_in_a_30k_token_trace_is_caught_with_its_offset(where):
    guard, engine = make_guard(24_000, 1_000)  # the shipped budget
    n = 30_000
    at = int(n * where)
    text = filler(at) + f"{MARKER} " + filler(n - at - 1, at)
    mon, d = stream(guard, text, every=64, step=8)
    assert d.action is Action.BLOCK and d.failure is None
    marker_tokens = approx_tokens(text[: text.index(MARKER) + len(MARKER)])
    # the first check after the marker arrived stops it: at most one interval plus a delta later
    assert marker_tokens <= mon.abort_offset <= marker_tokens + 64 + 8, (marker_tokens, mon.abort_offset)
    assert mon.stats.tokens_fed < n or where > 0.9  # the stream stopped early
    assert max(len(b) for b in engine.batches) <= 2


def test_a_reused_session_id_with_other_text_gets_fresh_verdicts():
    guard, engine = make_guard(100, 10)
    meta = {"session_id": "same"}
    first = filler(60)
    d1 = guard.check_reasoning("q", first, metadata=meta)
    calls = len(engine.judged)
    assert calls == len(split_windows(first, 100, 10))
    second = f"{MARKER} " + filler(59, 1)  # closed windows differ: nothing may be reused
    d2 = guard.check_reasoning("q", second, metadata=meta)
    assert d1.action is Action.ALLOW and d2.action is Action.BLOCK and d2.failure is None
    assert len(engine.judged) - calls == len(split_windows(second, 100, 10))
    assert not any(v.reused for v in d2.verdicts)
    # the same text again under the same stream: only the last window is judged again
    d3 = guard.check_reasoning("q", second, metadata=meta)
    assert d3.action is Action.BLOCK and sum(not v.reused for v in d3.verdicts) == 1
    # another query is another context: judged afresh
    before = len(engine.judged)
    guard.check_reasoning("other q", second, metadata=meta)
    assert len(engine.judged) - before == len(split_windows(second, 100, 10))


def test_a_window_the_guard_failed_on_is_judged_again_not_remembered():
    guard, engine = make_guard(100, 10, fail_first=1, fail_mode="open")
    meta = {"session_id": "s"}
    text = filler(60)
    d1 = guard.check_reasoning("q", text, metadata=meta)
    assert d1.degraded and d1.failure is not None
    d2 = guard.check_reasoning("q", text, metadata=meta)
    assert d2.failure is None and not any(v.reused for v in d2.verdicts)
    assert len(engine.judged) == len(split_windows(text, 100, 10))


def test_a_finished_stream_is_forgotten():
    guard, _ = make_guard(100, 10)
    mon, d = stream(guard, filler(200))
    assert d.action is Action.ALLOW
    assert len(guard.runner.judged) == 0
    turn_guard, _ = make_guard(100, 10)
    from guardrails_plugin.stream import Part, PartKind, TurnRunner

    runner = TurnRunner.of(turn_guard.stream_checks(), "q", check_every_tokens=8)
    for i, w in enumerate(filler(200).split(" ")):
        runner.feed(i, [Part(PartKind.REASONING, w + " ")])
    runner.finish()
    assert len(turn_guard.runner.judged) == 0


def test_one_shot_checks_judge_all_windows_in_one_batch():
    guard, engine = make_guard(100, 10)
    text = filler(80)
    d = guard.check_reasoning("q", text)
    assert d.action is Action.ALLOW
    assert engine.batches == [[text[s:e] for s, e in split_windows(text, 100, 10)]]


# -- the overlap rule, both sides of its limit ----------------------------------------------------
# Filler without spaces makes the cuts exact: windows [0, 100), [80, 180), [160, 260), ...
MAX, OVERLAP = 100, 20


def _placed(phrase: str, start: int, total: int = 300) -> str:
    return "x" * start + phrase + "x" * (total - start - len(phrase))


@pytest.mark.parametrize("mode", ["streamed", "one-shot"])
def test_a_span_up_to_the_overlap_straddling_a_cut_is_seen_whole(mode):
    phrase = "DANGER" + "Z" * (OVERLAP - 6)  # exactly the overlap long
    text = _placed(phrase, MAX - OVERLAP + 1)  # crosses the cut at 100, inside window [80, 180)
    assert split_windows(text, MAX, OVERLAP)[:2] == [(0, 100), (80, 180)]
    guard, engine = make_guard(MAX, OVERLAP, marker=phrase)
    d = _judge(guard, text, mode)
    assert d.action is Action.BLOCK and d.failure is None


@pytest.mark.parametrize("mode", ["streamed", "one-shot"])
def test_a_span_longer_than_the_overlap_split_by_a_cut_is_judged_in_parts(mode):
    # a straddling span up to overlap + 1 long always starts inside the next window; one longer
    # can start before it and end past this one: [79, 101) here
    phrase = "DANGER" + "Z" * (OVERLAP - 4)
    text = _placed(phrase, MAX - OVERLAP - 1)
    guard, engine = make_guard(MAX, OVERLAP, marker=phrase)
    d = _judge(guard, text, mode)
    # the documented limit: no window holds it whole, so a guard that needs it whole misses it
    assert d.action is Action.ALLOW and d.failure is None
    assert all(phrase not in t for t in engine.judged if len(t) > len(phrase))


def _judge(guard: Guard, text: str, mode: str):
    if mode == "one-shot":
        return guard.check_reasoning("q", text)
    mon = guard.stream_monitor(Stage.REASONING, "q", check_every_tokens=2, check_paragraphs=False)
    for i in range(0, len(text), 7):
        mon.feed(text[i : i + 7])
        view = mon.check_in_flight
        if view is not None:
            view.result(timeout=30)
    return mon.close(timeout=30)
