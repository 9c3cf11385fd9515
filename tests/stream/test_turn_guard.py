"""TurnGuard (sans-IO): sequences of parts in, releases, due checks and stops out.

No LangChain, no LiteLLM, no event loop: the test plays the driver, running each due check
through a verdict function of the checked text (harmful iff it contains the marker) whenever and
in whatever order the script says. The drivers are tested at the end with a real Guard on a
ScriptedEngine.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guardrails_plugin import Action, Decision, GuardConfig, Stage
from guardrails_plugin.stream import Part, PartKind, TurnGuard, parts_of
from guardrails_plugin.stream.extract import extract_deltas

MARKER = "bomb"
R, A, T, U = PartKind.REASONING, PartKind.ANSWER, PartKind.TOOL_CALL, PartKind.UNKNOWN


def verdict(action: Action = Action.BLOCK):
    def judge(stage: Stage, text: str) -> Decision:
        bad = MARKER in text
        return Decision(action=action if bad else Action.ALLOW, stage=stage, text="[x]" if bad else text,
                        reason="marker" if bad else "ok")

    return judge


class Sim:
    """Plays the driver: feeds parts, keeps the due checks, completes them on request."""

    def __init__(self, judge=None, unreadable=None, **kw):
        kw.setdefault("check_every_tokens", 4)
        self.turn = TurnGuard(GuardConfig(), "q", unreadable=unreadable, **kw)
        self.judge = judge or verdict()
        self.due: list = []
        self.released: list = []
        self.n = 0

    def feed(self, *parts: tuple[PartKind, str] | tuple[PartKind, str, int]) -> int:
        self.n += 1
        self.due += self.turn.feed(self.n, [Part(*p) for p in parts])
        self.released += self.turn.release()
        return self.n

    def complete(self, i: int = 0) -> None:
        check = self.due.pop(i)
        self.due += self.turn.complete(check, self.judge(check.track.stage, check.text))
        self.released += self.turn.release()

    def settle(self) -> None:
        self.due += self.turn.end()
        while self.due:
            self.complete()
        self.released += self.turn.release()


def words(n: int, start: int = 0) -> str:
    return "".join(f"w{i} " for i in range(start, start + n))


# -- table: scripts of steps in, releases and stops out -------------------------------------------
# steps: (R|A|T|U, text[, index]) feeds one item (numbered from 1) carrying that part;
# "done" completes the oldest due check; "end" ends the turn and completes every check.
CASES = {
    "benign: reasoning streams, the answer waits for the gate and its own check": dict(
        steps=[(R, words(2)), (R, words(2, 2)), (A, "Paris "), "done", (A, "is it."), "end"],
        after=[[1], [1, 2], [1, 2], [1, 2], [1, 2], [1, 2, 3, 4]], stop=None),
    "harmful reasoning blocks mid-stream; the answer never starts": dict(
        steps=[(R, words(2)), (R, f"a {MARKER} "), "done", (A, "sure"), "end"],
        after=[[1], [1, 2], [1, 2], [1, 2], [1, 2]], stop=(Action.BLOCK, Stage.REASONING)),
    "the gate: a short harmful trace (no check due) never gets its answer out": dict(
        steps=[(R, f"{MARKER} "), (A, "Step one: "), (A, "mix it"), "end"],
        after=[[1], [1], [1], [1]], stop=(Action.BLOCK, Stage.REASONING)),
    "hold-back: a harmful answer releases only the checked clean prefix": dict(
        steps=[(A, words(4)), "done", (A, f"the {MARKER} "), (A, words(4, 4)), "end"],
        after=[[], [1], [1], [1], [1]], stop=(Action.BLOCK, Stage.RESPONSE)),
    "tool-call arguments are judged with the answer and held": dict(
        steps=[(R, "plan. "), (T, '\n[tool call] send({"body": '), (T, f'"{MARKER}"}})'), "end"],
        after=[[1], [1], [1], [1]], stop=(Action.BLOCK, Stage.RESPONSE)),
    "benign tool calls go out once checked": dict(
        steps=[(T, '\n[tool call] send({"body": "lunch?"})'), "end"], after=[[], [1]], stop=None),
    "reasoning nobody can read goes to the fail mode (closed: stop)": dict(
        steps=[(R, "fine "), (U, "reasoning block with unreadable fields"), (A, "x"), "end"],
        after=[[1], [1], [1], [1]], stop=(Action.BLOCK, Stage.REASONING)),
    "n=2: the harmful choice stops the whole turn": dict(
        steps=[(A, "ok ", 0), (A, f"{MARKER} ", 1), "end"], after=[[], [], [1]], stop=(Action.BLOCK, Stage.RESPONSE)),
    "reasoning after the answer began is a new segment, gated again": dict(
        kw=dict(hold_back_answer=False), steps=[(R, "think "), (A, "so "), "done", (R, f"{MARKER} "), (A, "then "), "end"],
        after=[[1], [1], [1, 2], [1, 2, 3], [1, 2, 3], [1, 2, 3]], stop=(Action.BLOCK, Stage.REASONING)),
    "REDACT mid-stream stops like BLOCK (a redaction cannot be applied to text already sent)": dict(
        judge=verdict(Action.REDACT), steps=[(A, words(4)), "done", (A, f"{MARKER} x y z "), "done", (A, "more"), "end"],
        after=[[], [1], [1], [1], [1], [1]], stop=(Action.REDACT, Stage.RESPONSE)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(range(len(CASES))))
def test_turn_table(case: str) -> None:
    c = CASES[case]
    sim = Sim(judge=c.get("judge"), **c.get("kw", {}))
    for step, want in zip(c["steps"], c["after"], strict=True):
        if step == "done":
            sim.complete()
        elif step == "end":
            sim.settle()
        else:
            sim.feed(step)
        assert sim.released == want, (case, step)
    assert sim.turn.settled
    stop = sim.turn.stop
    assert (stop.action, stop.stage) == c["stop"] if c["stop"] else stop is None, (case, stop)


def test_due_checks_coalesce_to_the_newest_prefix() -> None:
    sim = Sim(check_every_tokens=2)
    for i in range(10):
        sim.feed((R, words(2, 2 * i)))
    assert len(sim.due) == 1  # one in flight; the nine that fell due behind it became one
    seg = sim.turn.tracks[0]
    assert seg.checks_coalesced == 8
    sim.complete()
    assert len(sim.due) == 1 and sim.due[0].tokens == 20  # the follow-up checks the newest prefix
    sim.settle()
    assert seg.checks_run == 2  # the end found everything covered


def test_the_answer_costs_one_check_not_two_or_three() -> None:
    """At the answer's start the reasoning's end-of-text check starts at once, beside the check
    still in flight, and so does the held answer's first check: the answer leaves when those two
    passed, not after the older check, the end check and its own check one after another."""
    sim = Sim(check_every_tokens=4)
    sim.feed((R, words(4)))
    older = sim.due[0]  # in flight, never completed before the answer starts
    sim.feed((R, words(2, 4)))
    sim.feed((A, "Paris "))
    assert [(c.track.stage, c.final) for c in sim.due] == [
        (Stage.REASONING, False), (Stage.REASONING, True), (Stage.RESPONSE, False)]
    assert sim.released == [1, 2]
    sim.complete(1)  # the reasoning's end-of-text check
    assert sim.released == [1, 2]  # the answer's own check has not passed yet
    sim.complete(1)  # the answer's first check
    assert sim.released == [1, 2, 3] and sim.due == [older]
    sim.feed((A, "is it."))
    sim.settle()
    assert sim.turn.stop is None and sim.released == [1, 2, 3, 4]


def test_an_older_check_that_blocks_after_the_end_check_passed_still_stops_the_turn() -> None:
    answers = iter([Action.BLOCK])  # the first verdict asked for below, whatever the text

    def judge(stage, text):
        d = verdict()(stage, text)
        return d if stage is not Stage.REASONING or "w3" in text else d.model_copy(
            update={"action": next(answers, Action.ALLOW)})

    sim = Sim(judge=judge, check_every_tokens=2)
    sim.feed((R, words(2)))
    sim.feed((R, words(2, 2)), (A, "ok "))  # the end check covers w0..w3; the first check w0 w1
    assert [(c.track.stage, c.final) for c in sim.due][:2] == [(Stage.REASONING, False), (Stage.REASONING, True)]
    sim.complete(1)  # the end check: allowed
    sim.complete(0)  # the older check comes back blocking: it still counts
    assert sim.turn.stop is not None and sim.turn.stop.stage is Stage.REASONING
    n = len(sim.released)
    sim.feed((A, "more"))
    sim.settle()
    assert len(sim.released) == n and 2 not in sim.released


def test_an_end_check_is_not_started_when_the_check_in_flight_covers_everything() -> None:
    sim = Sim(check_every_tokens=4)
    sim.feed((R, words(4)))
    sim.feed((A, "Paris "))
    assert [c.track.stage for c in sim.due] == [Stage.REASONING, Stage.RESPONSE]  # no second reasoning check
    sim.settle()
    assert sim.turn.stop is None and sim.turn.tracks[0].checks_run == 1


def test_detection_lag_counts_tokens_released_past_the_blocking_prefix() -> None:
    sim = Sim(check_every_tokens=4)
    sim.feed((R, words(3) + MARKER + " "))  # 4 tokens: a check of them is due
    for i in range(5):
        sim.feed((R, words(2, 10 + 2 * i)))  # streamed at once while the check runs
    sim.complete()
    t = sim.turn.stopped_track()
    assert t is not None and t.abort_offset == 4 and t.detection_lag == 10
    assert sim.turn.stats(Stage.REASONING).detection_lag_tokens == 10


def test_unknown_reasoning_under_fail_open_goes_on() -> None:
    def open_mode(stage, why):
        return Decision(action=Action.ALLOW, stage=stage, text="", reason="guard_bad_input", degraded=True)

    sim = Sim(unreadable=open_mode)
    sim.feed((U, "odd"), (A, "fine"))
    sim.settle()
    assert sim.turn.stop is None and sim.released == [1]


def test_no_gate_and_no_hold_back_streams_the_answer_at_once() -> None:
    sim = Sim(gate_answer=False, hold_back_answer=False)
    sim.feed((R, f"{MARKER} "))
    sim.feed((A, "Step one."))
    assert sim.released == [1, 2]  # what the gate prevents: caught only at the end
    sim.settle()
    assert sim.turn.stop.stage is Stage.REASONING


def test_tools_are_held_even_when_the_answer_is_not() -> None:
    sim = Sim(hold_back_answer=False)
    sim.feed((A, "ok "))
    sim.feed((T, f'\n[tool call] f("{MARKER}")'))
    assert sim.released == [1]
    sim.settle()
    assert sim.released == [1] and sim.turn.stop.stage is Stage.RESPONSE


# -- property: with hold-back on, nothing past a blocking prefix is ever released ------------------
feed_step = st.tuples(st.just("feed"), st.sampled_from([R, R, A, A, T]), st.sampled_from([0, 0, 0, 1]),
                      st.sampled_from([False, False, True]), st.integers(1, 5))
done_step = st.tuples(st.just("done"), st.integers(0, 7))
step = st.one_of(feed_step, done_step, feed_step, done_step, st.just(("end",)))  # ends are rarer


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@example(steps=[("feed", R, 0, True, 1), ("feed", A, 0, False, 3), ("done", 1)], gate=True, every=2,
         action=Action.BLOCK, hold_reasoning=False)  # the answer's own check lands before the gate's
@given(steps=st.lists(step, max_size=40), gate=st.booleans(), every=st.integers(1, 6),
       action=st.sampled_from([Action.BLOCK, Action.REDACT]), hold_reasoning=st.booleans())
def test_nothing_past_a_blocking_prefix_is_ever_released(steps, gate, every, action, hold_reasoning) -> None:
    # The answer is held back; reasoning either way (streamed reasoning may show its detection
    # lag, but never an answer after it: the gate).
    sim = Sim(judge=verdict(action), hold_back_reasoning=hold_reasoning, hold_back_answer=True, gate_answer=gate,
              check_every_tokens=every)
    carried: dict[int, list[tuple[PartKind, int, bool]]] = {}
    fed_marker = False
    w = 0
    for s in steps:
        if s[0] == "feed" and not sim.turn.ended:
            _, kind, index, harmful, n = s
            text = words(n, w) + (f"{MARKER} " if harmful else "")
            w += n
            before = len(sim.released)
            item = sim.feed((kind, text, index))
            carried[item] = [(kind, index, harmful)]
            fed_marker |= harmful
            if sim.turn.stop is not None:
                assert len(sim.released) == before
        elif s[0] == "done" and sim.due:
            stopped = sim.turn.stop is not None
            before = len(sim.released)
            sim.complete(s[1] % len(sim.due))
            if stopped:
                assert len(sim.released) == before  # nothing after a stop
        elif s[0] == "end":
            sim.due += sim.turn.end()
        _check_invariants(sim, carried)
    sim.settle()
    _check_invariants(sim, carried)
    # and it is live: a harmful turn ends stopped; a clean one releases everything
    assert (sim.turn.stop is not None) == fed_marker
    if not fed_marker:
        assert sim.released == sorted(carried)


def _check_invariants(sim: Sim, carried) -> None:
    assert sim.released == sorted(sim.released) and sim.released == list(range(1, len(sim.released) + 1))
    for t in sim.turn.tracks:
        if t.hold_back:
            assert MARKER not in t.text[: t.released], t  # released text of every held track is clean
    if sim.turn.stop is not None or not sim.turn.settled:  # tool calls leave with a clean turn only
        assert not any(k is T for item in sim.released for k, _, _ in carried[item])
    if sim.turn.gate_answer:  # no answer after a harmful trace of its choice
        seen_harmful_reasoning: set[int] = set()
        for item in sim.released:
            for kind, index, harmful in carried[item]:
                if kind is R and harmful:
                    seen_harmful_reasoning.add(index)
                assert not (kind in (A, T) and index in seen_harmful_reasoning)


# -- parts of wire formats -----------------------------------------------------------------------
def test_responses_reasoning_summaries_are_reasoning() -> None:
    summary = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think hard"}]}
    assert parts_of({"content": [summary, {"type": "text", "text": "hi"}]}) == [
        Part(R, "think hard"), Part(A, "hi")]
    assert parts_of({"content": "", "additional_kwargs": {"reasoning": summary}}) == [Part(R, "think hard")]
    raw = {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "raw cot"}]}
    assert extract_deltas({"content": [raw]}) == ("raw cot", "")


@pytest.mark.parametrize("odd", [
    {"content": [{"type": "reasoning", "reasoning": {"nested": "?"}}]},
    {"content": [{"type": "reasoning", "summary": [{"type": "image", "url": "x"}]}]},
    {"content": "", "reasoning_content": 42},
    {"choices": [{"index": 0, "delta": {"reasoning": {"weird": True}}}]},
])
def test_unknown_reasoning_shapes_are_unknown_parts_not_silence(odd) -> None:
    assert any(p.kind is U for p in parts_of(odd)), parts_of(odd)


def test_choices_keep_their_index_and_tool_calls_are_parts() -> None:
    chunk = {"choices": [
        {"index": 0, "delta": {"reasoning_content": "r0"}},
        {"index": 1, "delta": {"content": "a1", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}},
    ]}
    assert parts_of(chunk) == [Part(R, "r0", 0), Part(A, "a1", 1), Part(T, "\n[tool call] f({}", 1)]
    assert parts_of({"content": [{"type": "redacted_thinking", "data": "..."}]}) == []  # opaque, known


# -- the drivers, with a real Guard on a ScriptedEngine --------------------------------------------
def _guard():
    from guardrails_plugin import Guard
    from guardrails_plugin.engines import ScriptedEngine

    def respond(rendered: str) -> str:
        judged = rendered.rsplit("Thought: ", 1)[-1] if "Thought: " in rendered else rendered.rsplit("AI assistant:", 1)[-1]
        if "Thought: " in rendered:
            return '"Analysis": s\n"Judgment": ' + ("1" if MARKER in judged else "0")
        bad = "harmful" if MARKER in judged else "unharmful"
        return f"Answers: \nRequest: unharmful\nCompletion: compliance\nResponse: {bad}\n"

    return Guard(GuardConfig(), engine=ScriptedEngine(respond, latency_s=0.002))


def _stream(reasoning: str, answer: str):
    return [{"reasoning_content": w} for w in reasoning.split(" ") if w] + [{"content": w + " "} for w in answer.split(" ")]


def test_sync_and_async_drivers_share_the_rules() -> None:
    from guardrails_plugin.stream import TurnRunner, adrive, drive

    guard = _guard()
    deps = guard.stream_checks()
    freed: list[str] = []
    deps = type(deps)(**{**deps.__dict__, "release_session": freed.append})

    runner = TurnRunner(TurnGuard(guard.config, "q", check_every_tokens=2), deps)
    out = list(drive(runner, iter(_stream("one two three", "all fine here")), parts_of))
    assert runner.stop is None and len(out) == 6
    assert set(freed) == {t.session_id for t in runner.turn.tracks}

    async def agen(items):
        for x in items:
            await asyncio.sleep(0.001)
            yield x

    async def run():
        r = TurnRunner(TurnGuard(guard.config, "q", check_every_tokens=2), deps, local=True)
        got = [x async for x in adrive(r, agen(_stream(f"a {MARKER} plan then more words", "Sure: step one")), parts_of)]
        return r, got

    r, got = asyncio.run(run())
    assert r.stop is not None and r.stop.stage is Stage.REASONING
    assert not any("content" in x for x in got)  # the answer never went out
    guard.close()
