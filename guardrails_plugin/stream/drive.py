"""Drivers: a TurnGuard with its checks running, and the few lines that run a stream through it.

``TurnRunner`` is the IO half of a turn: it starts the checks a TurnGuard says are due and feeds
their Decisions back under one lock. ``drive`` (sync) and ``adrive`` (async) guard a stream of
wire items: they yield what may be released, close the source on a stop, and leave the stopping
Decision in ``runner.stop`` for the integration to shape into its own refusal. ``judge`` /
``ajudge`` apply the same rules to a turn that arrives whole (no stream).

Integrations only translate: wire format to parts (extract.py), releases and refusals back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..content import normalize_text
from ..types import Action, Decision, GuardRequest, Stage
from .extract import Part, PartKind
from .monitor import Runner, StreamChecks
from .turn import TurnGuard

log = logging.getLogger("guardrails_plugin")

PartsOf = Callable[[Any], list[Part]]


class TurnRunner:
    """A TurnGuard whose due checks run (``local=True``: as tasks on the running event loop,
    else on the engine loop thread). Thread-safe; ``finish()`` once at the end."""

    @classmethod
    def of(cls, deps: StreamChecks, query: Any = "", *, local: bool = False, **turn_kw: Any) -> TurnRunner:
        """A runner of a new TurnGuard whose unreadable parts go to ``deps``' fail mode."""
        meta = turn_kw.get("metadata")
        turn_kw.setdefault("hold_chars", deps.hold_chars)
        turn = TurnGuard(deps.config, query, unreadable=lambda stage, why: deps.unreadable(stage, why, meta), **turn_kw)
        return cls(turn, deps, local=local)

    def __init__(self, turn: TurnGuard, deps: StreamChecks, *, local: bool = False):
        self.turn = turn
        self.deps = deps
        loop = asyncio.get_running_loop() if local else None
        self._runner = Runner(deps, turn.complete, turn.request, loop)
        self.lock = self._runner.lock
        self._finished = False

    @property
    def stop(self) -> Decision | None:
        return self.turn.stop

    def feed(self, item: Any, parts: list[Part]) -> None:
        with self.lock:
            self._runner.start(self.turn.feed(item, parts))

    def end(self) -> None:
        with self.lock:
            self._runner.start(self.turn.end())

    def release(self) -> list[Any]:
        with self.lock:
            return self.turn.release()

    def abort(self, decision: Decision) -> None:
        with self.lock:
            self.turn.abort(decision)

    def in_flight(self) -> bool:
        with self.lock:
            return bool(self._runner.views)

    def wait(self, done: Callable[[TurnGuard], bool]) -> None:
        self._runner.wait(lambda: done(self.turn))

    async def wait_async(self, done: Callable[[TurnGuard], bool]) -> None:
        await self._runner.wait_async(lambda: done(self.turn))

    def pending_change(self) -> asyncio.Future[None] | None:
        """A future resolved by the next verdict; None when no check is in flight (then nothing
        changes until the next feed)."""
        with self.lock:
            return self._runner.changed() if self._runner.views else None

    def finish(self) -> None:
        """Drop checks still in flight, free the turn's engine state, record its stats."""
        if self._finished:
            return
        self._finished = True
        self._runner.discard()
        self.deps.finished(self.turn.tracks)

    def internal_error(self, exc: Exception) -> None:
        """Our own bug while reading the stream must not let unchecked text out: stop (closed)."""
        log.exception("guardrails-plugin stream guard failed")
        self.abort(Decision(action=Action.BLOCK, stage=Stage.RESPONSE, text=self.deps.config.refusal_message,
                            reason=f"guard_error: {exc!r}"))


def _settled(turn: TurnGuard) -> bool:
    return turn.settled


def drive(runner: TurnRunner, source: Iterable[Any], parts_of: PartsOf) -> Iterator[Any]:
    """Guard a sync stream: yield the items that may be released, in order. On a stop the source
    is closed and the iterator ends; ``runner.stop`` says why."""
    ended = False
    try:
        for item in source:
            try:
                runner.feed(item, parts_of(item))
            except Exception as exc:
                runner.internal_error(exc)
            if runner.stop is not None:
                break
            yield from runner.release()
        else:
            runner.end()
            runner.wait(_settled)
            ended = True
            yield from runner.release()
    finally:
        if not ended:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # stops the model when we stop early
        runner.finish()


async def adrive(runner: TurnRunner, source: AsyncIterable[Any], parts_of: PartsOf) -> Any:
    """Guard an async stream: like ``drive``, but while checks are in flight it waits for the next
    item and the next verdict at once, so held text goes out as soon as a check covers it and a
    stop lands mid-stream even when the source is quiet."""
    it = source.__aiter__()

    async def _next() -> Any:
        return await it.__anext__()

    nxt: asyncio.Future[Any] | None = None
    ended = False
    try:
        while True:
            change = runner.pending_change()  # taken before looking: no verdict slips past unseen
            if runner.stop is not None:
                break
            for x in runner.release():
                yield x
            if ended:
                if runner.turn.settled:
                    for x in runner.release():
                        yield x
                    break
                await (asyncio.wait([change]) if change is not None else runner.wait_async(_settled))
                continue
            if nxt is None and change is None:  # nothing can change but the source: just read it
                try:
                    item = await it.__anext__()
                except StopAsyncIteration:
                    ended = True
                    runner.end()
                else:
                    _feed(runner, item, parts_of)
                continue
            if nxt is None:
                nxt = asyncio.ensure_future(_next())
            await asyncio.wait((nxt, change) if change is not None else (nxt,), return_when=asyncio.FIRST_COMPLETED)
            if nxt.done():
                task, nxt = nxt, None
                try:
                    item = task.result()  # upstream errors propagate as they would unguarded
                except StopAsyncIteration:
                    ended = True
                    runner.end()
                else:
                    _feed(runner, item, parts_of)
    finally:
        if nxt is not None and not nxt.done():
            nxt.cancel()
            with contextlib.suppress(BaseException):
                await nxt
        if runner.stop is not None or not ended:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        runner.finish()


def _feed(runner: TurnRunner, item: Any, parts_of: PartsOf) -> None:
    try:
        runner.feed(item, parts_of(item))
    except Exception as exc:
        runner.internal_error(exc)


# -- a turn that arrives whole ------------------------------------------------------------------


@dataclass
class Verdicts:
    """What the checks of a whole turn say. ``stop``: refuse the turn (its tool calls dropped);
    else ``reasoning`` / ``answer`` are the REDACT decisions to apply, if any. ``decisions``: every
    stage's own Decision (an integration that asks a person about an escalation needs them all)."""

    stop: Decision | None = None
    reasoning: Decision | None = None
    answer: Decision | None = None
    decisions: dict[Stage, Decision] = field(default_factory=dict)


def split(parts: Iterable[Part], index: int | None = None) -> tuple[str, str, str, list[str]]:
    """(reasoning, answer, tool-call text, unknown) of the parts (of choice ``index``)."""
    r: list[str] = []
    a: list[str] = []
    t: list[str] = []
    u: list[str] = []
    by_kind = {PartKind.REASONING: r, PartKind.ANSWER: a, PartKind.TOOL_CALL: t, PartKind.UNKNOWN: u}
    for p in parts:
        if index is None or p.index == index:
            into = by_kind.get(p.kind)  # UNKNOWN_ANSWER: see ajudge
            if into is not None:
                into.append(p.text)
    return "".join(r), "".join(a), "".join(t).strip(), u


async def ajudge(
    deps: StreamChecks, query: str, parts: Iterable[Part], *, reasoning: bool = True, response: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Verdicts:
    """Check a whole turn: its reasoning and its answer with the tool calls, concurrently.

    BLOCK anywhere, reasoning or answer content nobody can read (closed fail mode), or a REDACT of an answer that
    carries tool calls (JSON arguments cannot be edited) refuses the turn."""
    parts = list(parts)
    r_text, a_text, tools, unknown = split(parts)
    unknown_answer = [p.text for p in parts if p.kind is PartKind.UNKNOWN_ANSWER]
    # lone surrogates become '?', as Guard.request does
    r_text, a_text, tools = (normalize_text(x, what="output").value for x in (r_text, a_text, tools))
    meta = dict(metadata or {})
    out = Verdicts()
    results: dict[Stage, Decision] = {}
    out.decisions = results
    checks: dict[Stage, Any] = {}
    if reasoning and r_text:
        checks[Stage.REASONING] = deps.check(GuardRequest(stage=Stage.REASONING, prompt=query, reasoning=r_text, metadata=meta))
    answer = "\n".join(x for x in (a_text, tools) if x)
    if response and answer:
        checks[Stage.RESPONSE] = deps.check(GuardRequest(stage=Stage.RESPONSE, prompt=query, response=answer, metadata=meta))
    results.update(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    if reasoning and unknown:  # reasoning nobody can read: the fail mode decides, never "no reasoning"
        u, r = deps.unreadable(Stage.REASONING, "; ".join(unknown), meta), results.get(Stage.REASONING)
        if u.blocked and (r is None or not r.blocked):
            results[Stage.REASONING] = u
    judged = Stage.RESPONSE if response else Stage.REASONING if reasoning else None
    if unknown_answer and judged is not None:  # answer content nobody can read: the fail mode decides
        u, a = deps.unreadable(judged, "; ".join(unknown_answer), meta), results.get(judged)
        if u.blocked and (a is None or not a.blocked):
            results[judged] = u
    for stage in (Stage.REASONING, Stage.RESPONSE):
        d = results.get(stage)
        if d is not None and d.blocked and out.stop is None:
            out.stop = d
    a = results.get(Stage.RESPONSE)
    if out.stop is None and a is not None and a.action is Action.REDACT and tools:
        out.stop = a.model_copy(update={"action": Action.BLOCK, "text": deps.config.refusal_message,
                                        "reason": f"{a.reason} (a redaction cannot edit tool-call arguments)"})
    if out.stop is None:
        r = results.get(Stage.REASONING)
        out.reasoning = r if r is not None and r.action is Action.REDACT else None
        out.answer = a if a is not None and a.action is Action.REDACT else None
    return out


def judge(deps: StreamChecks, query: str, parts: Iterable[Part], **kw: Any) -> Verdicts:
    """Sync twin of ``ajudge`` (runs on the engine loop thread)."""
    return deps.runtime.run(ajudge(deps, query, list(parts), **kw))
