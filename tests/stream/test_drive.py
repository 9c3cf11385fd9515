"""The drivers (drive.py): ``drive`` / ``adrive`` run a real stream through a TurnRunner whose checks
run on a real Guard (a ScriptedEngine that calls a text harmful iff it contains the marker), and
``judge`` / ``ajudge`` apply the same rules to a turn that arrives whole.

Timing never decides an assertion: where a case needs a verdict to land mid-stream, the upstream
waits for it before it yields again (or never yields again), as a quiet model would.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from langchain_support import MARKER, scripted_guard
from sync_support import wait_until

from guardrails_plugin import Action, Decision, FailureKind, Stage
from guardrails_plugin.stream import Part, PartKind, TurnRunner, adrive, ajudge, drive, judge, parts_of
from guardrails_plugin.stream.drive import split

pytestmark = pytest.mark.timeout(60)

R, A, T, U, UA = PartKind.REASONING, PartKind.ANSWER, PartKind.TOOL_CALL, PartKind.UNKNOWN, PartKind.UNKNOWN_ANSWER

CLEAN = [{"reasoning_content": "think "}, {"reasoning_content": "it over. "}, {"role": "assistant"},
         {"content": "Paris "}, {"content": "is it."}]


@pytest.fixture
def guard():
    g, _ = scripted_guard(latency_s=0.0)
    yield g
    g.close()


class Books:
    """What a runner's ``finish`` did: sessions freed and stats recorded, per track."""

    def __init__(self, guard: Any):
        self.freed: list[str] = []
        self.stats: list[Any] = []
        self.deps = dataclasses.replace(guard.stream_checks(), release_session=self.freed.append,
                                        observe=self.stats.append)

    def cleaned_up(self, runner: TurnRunner) -> bool:
        sessions = [t.session_id for t in runner.turn.tracks]
        return bool(sessions) and sorted(self.freed) == sorted(sessions) and len(self.stats) == len(sessions)


def upstream(items: list[Any], log: list[Any], before: Callable[[int], None] | None = None,
             fail_at: int | None = None):
    """A sync model stream that logs what was read, and whether it was closed or ended."""
    try:
        for i, x in enumerate(items):
            if fail_at == i:
                raise ConnectionError("upstream went away")
            if before is not None:
                before(i)
            log.append(i)
            yield x
        log.append("end")
    except GeneratorExit:
        log.append("closed")
        raise


async def aupstream(items: list[Any], log: list[Any], before: Callable[[int], Any] | None = None,
                    fail_at: int | None = None):
    """The async twin; ``before`` may be a coroutine function (a model that goes quiet)."""
    try:
        for i, x in enumerate(items):
            await asyncio.sleep(0)
            if fail_at == i:
                raise ConnectionError("upstream went away")
            if before is not None:
                r = before(i)
                if asyncio.iscoroutine(r):
                    await r
            log.append(i)
            yield x
        log.append("end")
    finally:
        log.append("finally")


MODES = ["sync", "async-local", "async-engine-loop"]


def run(mode: str, books: Books, items: list[Any], log: list[Any], *, parts=parts_of,
        fail_at: int | None = None, **turn_kw: Any) -> tuple[TurnRunner, list[Any]]:
    """Drive ``items`` through a new runner in ``mode``; the runner and what came out."""
    if mode == "sync":
        runner = TurnRunner.of(books.deps, "q", **turn_kw)
        return runner, list(drive(runner, upstream(items, log, fail_at=fail_at), parts))

    async def go() -> tuple[TurnRunner, list[Any]]:
        r = TurnRunner.of(books.deps, "q", local=mode == "async-local", **turn_kw)
        return r, [x async for x in adrive(r, aupstream(items, log, fail_at=fail_at), parts)]

    return asyncio.run(asyncio.wait_for(go(), 30))


# -- sync and async: one set of rules ------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_a_clean_stream_goes_out_whole_in_order_and_is_cleaned_up(guard, mode: str) -> None:
    books, log = Books(guard), []
    runner, out = run(mode, books, CLEAN, log)
    assert runner.stop is None
    assert out == CLEAN and all(a is b for a, b in zip(out, CLEAN, strict=True))  # the items themselves
    assert log[:6] == [0, 1, 2, 3, 4, "end"] and "closed" not in log  # read to its end, never cut off
    assert books.cleaned_up(runner)


@pytest.mark.parametrize("mode", MODES)
def test_a_stop_found_by_the_end_check_releases_nothing_of_the_harmful_answer(guard, mode: str) -> None:
    items = [{"reasoning_content": "fine. "}, {"content": "Sure: "}, {"content": f"a {MARKER} recipe"}]
    books, log = Books(guard), []
    runner, out = run(mode, books, items, log)
    assert runner.stop is not None and runner.stop.blocked and runner.stop.stage is Stage.RESPONSE
    assert not any(MARKER in x.get("content", "") for x in out)
    assert out[:1] == items[:1]  # the reasoning streamed (no hold-back)
    assert books.cleaned_up(runner)


@pytest.mark.parametrize("mode", MODES)
def test_a_bug_reading_the_stream_stops_it_closed(guard, mode: str) -> None:
    """Our own error must not let unread text out: the turn stops with a BLOCK, the source is cut."""
    def broken(item: Any) -> list[Part]:
        if "content" in item:
            raise KeyError("no such field")
        return parts_of(item)

    items = [{"reasoning_content": "think "}, {"content": "the answer "}, {"content": "more"}]
    books, log = Books(guard), []
    runner, out = run(mode, books, items, log, parts=broken)
    assert runner.stop is not None and runner.stop.action is Action.BLOCK
    assert runner.stop.reason.startswith("guard_error") and runner.stop.text == guard.config.refusal_message
    assert out == items[:1]
    assert 2 not in log and ("closed" in log or "finally" in log)  # the source was cut, not drained
    assert books.cleaned_up(runner)


@pytest.mark.parametrize("mode", MODES)
def test_an_upstream_error_propagates_as_it_would_unguarded_and_the_turn_is_cleaned_up(guard, mode: str) -> None:
    books, log = Books(guard), []
    with pytest.raises(ConnectionError, match="went away"):
        run(mode, books, CLEAN, log, fail_at=2)
    assert books.freed and len(books.stats) == len(books.freed)  # finish() ran


# -- sync -------------------------------------------------------------------------------------------

def test_drive_stops_mid_stream_and_closes_the_source(guard) -> None:
    books, log = Books(guard), []
    runner = TurnRunner.of(books.deps, "q", check_every_tokens=2)
    items = [{"content": "Sure, "}, {"content": f"a {MARKER} "}, {"content": "step "}, {"content": "two"}]

    def quiet_until_the_verdict(i: int) -> None:
        if i == 2:  # the model is slower than the guard: the stop is in before the next chunk
            assert wait_until(lambda: runner.stop is not None)

    out = list(drive(runner, upstream(items, log, before=quiet_until_the_verdict), parts_of))
    assert runner.stop is not None and runner.stop.stage is Stage.RESPONSE
    assert out in ([], items[:1])  # at most the checked clean prefix
    assert log == [0, 1, 2, "closed"]  # read no further than the item that found the stop
    assert books.cleaned_up(runner)


def test_a_consumer_that_stops_reading_closes_the_source(guard) -> None:
    books, log = Books(guard), []
    runner = TurnRunner.of(books.deps, "q")
    gen = drive(runner, upstream(CLEAN, log), parts_of)
    assert next(gen) is CLEAN[0]  # reasoning streams at once
    gen.close()
    assert log == [0, "closed"] and books.cleaned_up(runner)
    runner.finish()  # idempotent: nothing recorded twice
    assert len(books.stats) == len(runner.turn.tracks)


# -- async ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("local", [True, False], ids=["local", "engine-loop"])
def test_adrive_releases_held_text_while_the_source_is_quiet(guard, local: bool) -> None:
    """The first answer chunk is held for its check; the model sends nothing more until the client
    has it. A driver that released only on the next chunk would wait forever."""
    books, log = Books(guard), []
    items = [{"content": "Paris "}, {"content": "is it."}]

    async def go() -> list[Any]:
        got_first = asyncio.Event()
        runner = TurnRunner.of(books.deps, "q", local=local)

        async def wait_for_client(i: int) -> None:
            if i == 1:
                await got_first.wait()

        out = []
        async for x in adrive(runner, aupstream(items, log, before=wait_for_client), parts_of):
            out.append(x)
            got_first.set()
        assert runner.stop is None and books.cleaned_up(runner)
        return out

    assert asyncio.run(asyncio.wait_for(go(), 30)) == items


@pytest.mark.parametrize("local", [True, False], ids=["local", "engine-loop"])
def test_adrive_stops_while_the_source_is_quiet_and_cancels_its_read(guard, local: bool) -> None:
    books, log = Books(guard), []
    items = [{"content": "Sure, "}, {"content": f"a {MARKER} "}, {"content": "never sent"}]

    async def go() -> tuple[TurnRunner, list[Any]]:
        runner = TurnRunner.of(books.deps, "q", local=local, check_every_tokens=2)

        async def hang(i: int) -> None:
            if i == 2:
                await asyncio.Event().wait()  # a model that never sends another chunk

        out = [x async for x in adrive(runner, aupstream(items, log, before=hang), parts_of)]
        return runner, out

    runner, out = asyncio.run(asyncio.wait_for(go(), 30))
    assert runner.stop is not None and runner.stop.blocked and runner.stop.stage is Stage.RESPONSE
    assert out in ([], items[:1])
    assert log == [0, 1, "finally"]  # the pending read was cancelled; nothing past the stop was read
    assert books.cleaned_up(runner)


def test_an_async_consumer_that_stops_reading_closes_the_source(guard) -> None:
    books, log = Books(guard), []

    async def go() -> TurnRunner:
        runner = TurnRunner.of(books.deps, "q", local=True)
        gen = adrive(runner, aupstream(CLEAN, log), parts_of)
        assert await gen.__anext__() is CLEAN[0]
        await gen.aclose()
        return runner

    runner = asyncio.run(asyncio.wait_for(go(), 30))
    assert log == [0, "finally"] and books.cleaned_up(runner)


# -- a turn that arrives whole -----------------------------------------------------------------------

def verdicts(mode: str, books: Books, parts: list[Part], **kw: Any):
    if mode == "sync":
        return judge(books.deps, "q", parts, **kw)
    return asyncio.run(ajudge(books.deps, "q", parts, **kw))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_clean_whole_turn_has_every_stage_judged_and_nothing_to_apply(guard, mode: str) -> None:
    v = verdicts(mode, Books(guard), [Part(R, "think "), Part(A, "Paris"), Part(T, '\n[tool call] f({"x": 1})')])
    assert v.stop is None and v.reasoning is None and v.answer is None
    assert {s: d.action for s, d in v.decisions.items()} == {Stage.REASONING: Action.ALLOW, Stage.RESPONSE: Action.ALLOW}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("parts", "stage"), [
    ([Part(R, f"a {MARKER} plan "), Part(A, "Sure")], Stage.REASONING),
    ([Part(R, "fine "), Part(A, f"a {MARKER}")], Stage.RESPONSE),
    ([Part(A, "ok "), Part(T, f'\n[tool call] send({{"body": "{MARKER}"}})')], Stage.RESPONSE),
    ([Part(A, "ok "), Part(R, f"{MARKER} ", 1)], Stage.REASONING),  # every choice is judged
], ids=["reasoning", "answer", "tool-call", "second-choice"])
def test_a_harmful_whole_turn_stops_at_its_stage(guard, mode: str, parts: list[Part], stage: Stage) -> None:
    v = verdicts(mode, Books(guard), parts)
    assert v.stop is not None and v.stop.blocked and v.stop.stage is stage and v.stop.failure is None


def test_only_the_stages_asked_are_judged(guard) -> None:
    v = verdicts("sync", Books(guard), [Part(R, f"a {MARKER} "), Part(A, "fine")], reasoning=False)
    assert v.stop is None and set(v.decisions) == {Stage.RESPONSE}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("parts", "kw", "stage"), [
    ([Part(R, "fine "), Part(U, "a reasoning block with unreadable fields"), Part(A, "x")], {}, Stage.REASONING),
    ([Part(A, "x"), Part(UA, "provider_specific_fields.secret")], {}, Stage.RESPONSE),
    ([Part(A, "x"), Part(UA, "provider_specific_fields.secret")], {"response": False}, Stage.REASONING),
], ids=["reasoning", "answer", "answer-when-only-reasoning-is-judged"])
def test_content_nobody_can_read_meets_the_fail_mode(guard, mode: str, parts, kw, stage: Stage) -> None:
    v = verdicts(mode, Books(guard), parts, **kw)
    assert v.stop is not None and v.stop.blocked and v.stop.stage is stage
    assert v.stop.failure is FailureKind.BAD_INPUT


def test_unreadable_content_under_an_open_fail_mode_goes_on() -> None:
    g, _ = scripted_guard(latency_s=0.0, fail_mode="open")
    try:
        v = verdicts("sync", Books(g), [Part(U, "odd"), Part(A, "x"), Part(UA, "odd too")])
        assert v.stop is None
    finally:
        g.close()


def test_an_unreadable_part_never_hides_the_guards_own_block(guard) -> None:
    v = verdicts("sync", Books(guard), [Part(R, f"a {MARKER} "), Part(U, "odd"), Part(A, "x")])
    assert v.stop is not None and v.stop.stage is Stage.REASONING and v.stop.failure is None


def _redacting(guard: Any, seen: list[Any]) -> Books:
    """The Guard's stream checks, with every RESPONSE verdict turned into a REDACT of its text."""
    books = Books(guard)
    check = books.deps.check

    async def redact(request):
        seen.append(request)
        d: Decision = await check(request)
        if request.stage is Stage.RESPONSE:
            return d.model_copy(update={"action": Action.REDACT, "text": "[redacted]", "reason": "pii"})
        return d

    books.deps = dataclasses.replace(books.deps, check=redact)
    return books


def test_a_redacted_answer_is_handed_back_to_apply(guard) -> None:
    v = verdicts("async", _redacting(guard, []), [Part(R, "think "), Part(A, "mail me at a@b.co")])
    assert v.stop is None and v.reasoning is None
    assert v.answer is not None and v.answer.action is Action.REDACT


def test_a_redaction_of_an_answer_with_tool_calls_refuses_the_turn(guard) -> None:
    """JSON arguments cannot be edited: the turn is refused, its tool calls with it."""
    v = verdicts("sync", _redacting(guard, []), [Part(A, "sending "), Part(T, '\n[tool call] send({"to": "a@b.co"})')])
    assert v.stop is not None and v.stop.action is Action.BLOCK and v.stop.text == guard.config.refusal_message
    assert "tool-call arguments" in v.stop.reason and v.answer is None


def test_a_whole_turn_is_judged_as_normalised_text(guard) -> None:
    """Lone surrogates reach the guard as '?' (as Guard.request does), tool calls with the answer."""
    seen: list[Any] = []
    verdicts("async", _redacting(guard, seen), [Part(R, "r\ud800 "), Part(A, "a\udfff"), Part(T, "\n[tool call] f()")])
    by_stage = {r.stage: r for r in seen}
    assert by_stage[Stage.REASONING].reasoning == "r? "
    assert by_stage[Stage.RESPONSE].response == "a?\n[tool call] f()"


def test_split_sorts_parts_by_kind_for_one_choice_or_all() -> None:
    parts = [Part(R, "r0 "), Part(A, "a0"), Part(T, " t0 "), Part(U, "u0"), Part(UA, "ua0"), Part(R, "r1", 1),
             Part(A, "a1", 1)]
    assert split(parts) == ("r0 r1", "a0a1", "t0", ["u0"])
    assert split(parts, 1) == ("r1", "a1", "", [])
