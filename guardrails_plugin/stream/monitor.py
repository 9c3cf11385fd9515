"""Running streamed checks: ``StreamChecks`` (what the stream layer needs from a Guard, passed in),
``Runner`` (runs a sans-IO owner's due checks off the caller's path) and ``ReasoningMonitor``
(one streamed text: a Track plus a Runner).

Checks run off the token path: ``feed`` starts a due check on the library's engine loop (or, for
an async turn, on the caller's own loop) and returns at once; each verdict is applied under one
lock when it lands, so a stop is visible to the feeding thread without it doing anything.

A monitor's hold-back (see track.py) decides what ``drain()`` hands out. Wrappers that can delay
tokens (GuardedRunnable, the LiteLLM hook) honour it; a LangChain callback handler cannot delay
tokens and can only abort.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..content import normalize_text
from ..types import Action, Decision, FailureKind, GuardRequest, Stage, Verdict
from .track import Check, MonitorStats, Track

if TYPE_CHECKING:
    from ..config import GuardConfig
    from ..policy import Policy
    from ..runtime import LoopThread

log = logging.getLogger("guardrails_plugin")

__all__ = ["MonitorStats", "ReasoningMonitor", "Runner", "StreamChecks"]


@dataclass(frozen=True)
class StreamChecks:
    """What monitors and turn guards need from a Guard (``Guard.stream_checks()``): the check,
    the config and policy, the engine loop, and where to report. Passed in, so the stream layer
    never reaches into the facade."""

    check: Callable[[GuardRequest], Coroutine[Any, Any, Decision]]
    config: GuardConfig
    policy: Policy  # decides the fail mode of content that cannot be read
    runtime: LoopThread  # runs checks for sync callers
    release_session: Callable[[str], None] = lambda session_id: None
    observe: Callable[[MonitorStats], None] | None = None
    #: how much a held-back stream of a stage keeps back so no detector's value is partly released
    hold_chars: Callable[[Stage], int] = lambda stage: 0

    def unreadable(self, stage: Stage, why: str, metadata: dict[str, Any] | None = None) -> Decision:
        """The stage's fail-mode decision for content no guard can read: unknown is unsafe."""
        request = GuardRequest(stage=stage, metadata=dict(metadata or {}))
        verdict = Verdict(guard="input", stage=stage, risk=1.0, parse_error=why, failure=FailureKind.BAD_INPUT)
        decision = self.policy.decide(request, [verdict])
        log.warning("guardrails-plugin cannot read the %s (%s): %s by the fail mode", stage, why, decision.action)
        return decision

    def finished(self, tracks: Iterable[Track]) -> None:
        """A stream is over: free its engine state (KV caches) and record its stats. Never raises."""
        for t in tracks:
            try:
                self.release_session(t.session_id)
                if self.observe is not None:
                    self.observe(t.stats)
            except Exception:
                log.exception("cleaning up a stream's %s checks failed", t.stage)


def error_decision(stage: Stage, refusal: str, exc: BaseException) -> Decision:
    """A check that raised (a bug path: the Guard maps engine failures itself) blocks."""
    return Decision(action=Action.BLOCK, stage=stage, text=refusal, reason=f"monitor_error: {exc!r}")


class Runner:
    """Runs checks for a sans-IO owner and applies each verdict under ``lock``.

    ``apply(check, decision)`` returns the follow-up checks to start. ``loop=None`` runs checks
    on the engine loop thread (sync callers); an event loop runs them there as tasks (an async
    turn on its own loop: no thread hop)."""

    def __init__(
        self,
        deps: StreamChecks,
        apply: Callable[[Check, Decision], Check | list[Check] | None],
        request: Callable[[Check], GuardRequest],
        loop: asyncio.AbstractEventLoop | None = None,
    ):
        self.deps = deps
        # Re-entrant: a check that completes before add_done_callback runs applies its verdict
        # on the starting thread, which holds the lock.
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._apply = apply
        self._request = request
        self._loop = loop
        self.views: dict[Check, Future[Decision]] = {}  # checks in flight -> what callers may wait on
        self._tasks: dict[Check, Any] = {}
        self._change: asyncio.Future[None] | None = None
        self.discarded = False

    def start(self, checks: Check | list[Check] | None) -> None:
        """Start ``checks`` (call with the lock held)."""
        if checks is None:
            return
        for check in (checks,) if isinstance(checks, Check) else checks:
            view: Future[Decision] = Future()
            self.views[check] = view
            coro = self.deps.check(self._request(check))
            fut: Any
            if self._loop is None:
                fut = self.deps.runtime.submit(coro)
            else:
                fut = self._tasks[check] = self._loop.create_task(coro)
            fut.add_done_callback(functools.partial(self._done, check, view))

    def _done(self, check: Check, view: Future[Decision], fut: Any) -> None:
        exc: BaseException | None = None
        try:
            decision = fut.result()
        except BaseException as e:  # Guard.acheck maps engine failures; this is a bug path
            exc = e
            decision = error_decision(check.track.stage, self.deps.config.refusal_message, e)
        with self.lock:
            self.views.pop(check, None)
            self._tasks.pop(check, None)
            if not self.discarded:
                self.start(self._apply(check, decision))
            self._cond.notify_all()
            change, self._change = self._change, None
        if change is not None:
            _wake(change)
        # after the verdict is applied: whoever waits on the view wakes to the new state
        if not view.set_running_or_notify_cancel():
            return  # the caller cancelled its view: that stops its wait, never the check
        if exc is not None:
            view.set_exception(exc)
        else:
            view.set_result(decision)

    def wait(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``done()`` (evaluated under the lock) or ``timeout``."""
        with self._cond:
            return self._cond.wait_for(done, timeout)

    async def wait_async(self, done: Callable[[], bool]) -> None:
        """Await ``done()`` (evaluated under the lock) without blocking the loop."""
        while True:
            with self.lock:
                if done():
                    return
                change = self.changed()
            await asyncio.wait([change])  # never cancels the shared future

    def changed(self) -> asyncio.Future[None]:
        """A future of the running loop, resolved when the next verdict has been applied."""
        with self.lock:
            if self._change is None:
                self._change = asyncio.get_running_loop().create_future()
            return self._change

    def discard(self) -> None:
        """Drop the checks in flight: their verdicts are ignored (tasks on our loop are cancelled)."""
        with self.lock:
            self.discarded = True
            tasks = list(self._tasks.values())
            self._cond.notify_all()
        for t in tasks:
            t.cancel()


def _wake(fut: asyncio.Future[None]) -> None:
    loop = fut.get_loop()
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        _resolve(fut)
    else:
        loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ReasoningMonitor:
    """Incremental checks of one streaming text with early abort. One per stream; not reusable.

    Built by ``guard.reasoning_monitor(query)`` / ``guard.stream_monitor(stage, query)``."""

    def __init__(
        self,
        checks: StreamChecks,
        query: Any = "",
        *,
        stage: Stage | str = Stage.REASONING,
        check_every_tokens: int | None = None,
        hold_back: bool | None = None,
        check_paragraphs: bool = True,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._checks = checks
        # Normalised like Guard.request's input: a query no guard can judge fails here, loudly,
        # not inside the first check after text was already released downstream.
        q = normalize_text(query, what="query")
        self.query = q.value
        self.stage = Stage(stage)
        cfg = checks.config
        self.request_id = request_id
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("session_id", uuid.uuid4().hex)
        if q.notes:
            self.metadata["input_notes"] = [*self.metadata.get("input_notes", []), *q.notes]
        self.track = Track(
            self.stage,
            every=check_every_tokens or cfg.stage(self.stage).check_every_tokens,
            hold_back=cfg.hold_back_for(self.stage) if hold_back is None else hold_back,
            paragraphs=check_paragraphs,
            session_id=str(self.metadata["session_id"]),
        )
        self._runner = Runner(checks, self._apply, self._request)
        self._ready: list[Decision] = []  # completed decisions not yet returned by feed
        self._drained = 0
        self._closed = False

    # -- public API ---------------------------------------------------------------------------
    check_every_tokens = property(lambda self: self.track.every)
    hold_back = property(lambda self: self.track.hold_back)
    check_paragraphs = property(lambda self: self.track.paragraphs)
    decision = property(lambda self: self.track.decision, doc="The blocking decision, once aborted.")
    last_decision = property(lambda self: self.track.last_decision)
    abort_offset = property(lambda self: self.track.abort_offset)
    aborted = property(lambda self: self.track.decision is not None)
    stats = property(lambda self: self.track.stats, doc="MonitorStats (a snapshot).")

    @property
    def check_in_flight(self) -> Future[Decision] | None:
        """The running check's future, if any: ``await asyncio.wrap_future(f)`` (any loop) or
        ``f.result()`` to wait for the next verdict instead of polling. It completes after the
        monitor has applied the verdict; cancelling it only stops that wait, never the check."""
        with self._runner.lock:
            inflight = self.track.inflight
            return self._runner.views.get(inflight) if inflight is not None else None

    @property
    def text(self) -> str:
        with self._runner.lock:
            return self.track.text

    @property
    def held_text(self) -> str:
        """Text fed but not yet released (what hold-back is keeping back)."""
        with self._runner.lock:
            return self.track.text[self.track.released :]

    def feed(self, delta: Any) -> Decision | None:
        """Add a delta; maybe start a check. Returns a Decision if one completed since the last
        call (the blocking one once aborted), else None. Never waits for the guard. ``delta`` is
        str (bytes are decoded as UTF-8, None adds nothing); anything else raises GuardInputError
        before it is added."""
        t0 = time.perf_counter()
        if delta is None:
            delta = ""
        elif type(delta) is not str:
            delta = normalize_text(delta, what="delta").value
        track = self.track
        try:
            with self._runner.lock:
                if self._closed:
                    raise RuntimeError("monitor is closed")
                if track.decision is None and delta:
                    check = track.add(delta)
                    if not track.hold_back:  # before starting: a check may complete inline
                        track.released = track.chars
                    if check is not None:
                        self._runner.start(check)
                return self._take_ready() if self._ready else None
        finally:
            track.feed_time_us += (time.perf_counter() - t0) * 1e6

    async def afeed(self, delta: Any) -> Decision | None:
        """Async twin of feed (also non-blocking)."""
        return self.feed(delta)

    def drain(self) -> str:
        """Text newly allowed downstream since the last drain. Under hold-back that is text a
        completed check has covered; without it, everything fed before an abort."""
        with self._runner.lock:
            released = self.track.released
            if released <= self._drained:
                return ""
            out = self.track.text[self._drained : released]
            self._drained = released
            return out

    def close(self, timeout: float | None = None) -> Decision:
        """Wait for checks in flight, run the end-of-trace check, and return the final Decision."""
        return self._checks.runtime.run(self._aclose(), timeout)

    async def aclose(self) -> Decision:
        return await self._checks.runtime.arun(self._aclose())

    def discard(self) -> None:
        """Stop without an end-of-trace check (the stream was cut off and nothing more will be
        released): pending checks are dropped and engine state kept for this stream is freed."""
        with self._runner.lock:
            self._closed = True
            self.track.closed = True
        self._runner.discard()
        self._checks.release_session(self.track.session_id)

    # -- internals ----------------------------------------------------------------------------
    def _request(self, check: Check) -> GuardRequest:
        extra = {"request_id": self.request_id} if self.request_id else {}
        text = {"reasoning" if self.stage is Stage.REASONING else "response": check.text}
        return GuardRequest(stage=self.stage, prompt=self.query, metadata=dict(self.metadata), **text, **extra)

    def _apply(self, check: Check, decision: Decision) -> Check | None:
        track = self.track
        follow = track.done(check, decision)
        if track.hold_back and track.decision is None:
            track.release(track.covered)
        self._ready.append(decision)
        return follow

    def _take_ready(self) -> Decision | None:
        ready, self._ready = self._ready, []
        return self.track.decision or ready[-1]

    async def _aclose(self) -> Decision:
        """Runs on the engine loop."""
        try:
            with self._runner.lock:
                self._closed = True
                self._runner.start(self.track.close())
            while True:  # every check still running: the end-of-text one may run beside an older one
                with self._runner.lock:
                    views = list(self._runner.views.values())
                if not views:
                    break
                # Only wait: the outcome, an error included, is applied by the runner (an error
                # blocks). asyncio.wait neither raises the check's exception nor cancels it.
                waiters = [asyncio.wrap_future(v) for v in views]
                await asyncio.wait(waiters)
                for waiter in waiters:
                    if not waiter.cancelled():
                        waiter.exception()  # retrieved: no "never retrieved" noise
            with self._runner.lock:
                outcome = self.track.outcome
            assert outcome is not None
            return outcome
        finally:
            self._checks.finished([self.track])

    def __repr__(self) -> str:
        t = self.track
        return f"ReasoningMonitor(stage={self.stage}, tokens={t.tokens}, checks={t.checks_run}, aborted={self.aborted})"
