"""ReasoningMonitor: guards a chain of thought (or an answer) while it streams.

The trace is checked every ``check_every_tokens`` tokens, at paragraph ends, and once at the end.
Checks run off the token path: ``feed`` schedules a check on the library's engine loop and returns
at once. When a check falls due while another is in flight, the two coalesce into one check of the
newest prefix (a guard can never keep up with a decoder token by token, so checking stale prefixes
only adds lag).

Hold-back decides what may be released downstream:

* ``hold_back=True`` (default for the answer): text is released only once a completed check has
  covered it. Nothing past a blocking prefix is ever released: zero leakage, paid for in latency
  (the consumer sees text in bursts, up to one check interval plus one guard call behind).
* ``hold_back=False`` (default for reasoning): text streams at once and a blocking check aborts the
  stream as soon as it returns. The tokens released between the end of the blocking prefix and the
  abort are the detection lag, which the monitor measures and reports.

Wrappers that can delay tokens (GuardedRunnable, the LiteLLM hook) honour hold-back; a LangChain
callback handler cannot delay tokens (they are already on their way) and can only abort.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .content import normalize_text
from .streaming import approx_tokens
from .types import Action, Decision, GuardRequest, Stage

if TYPE_CHECKING:
    from .guard import Guard


class MonitorStats(BaseModel):
    """What a monitor did; the basis of the monitor benchmark and metrics."""

    stage: Stage
    checks_run: int = 0
    checks_coalesced: int = 0
    guard_time_ms: float = 0.0
    tokens_fed: int = 0
    tokens_released: int = 0
    tokens_checked: int = 0
    aborted: bool = False
    abort_offset: int | None = None
    detection_lag_tokens: int | None = None
    feed_time_us_total: float = 0.0


@dataclass
class _Check:
    chars: int  # prefix length in characters
    tokens: int  # prefix length in tokens
    future: Future[Decision] | None = None  # the check itself (on the engine loop)
    view: Future[Decision] | None = None  # what check_in_flight hands out: cancelling it is harmless
    started: float = field(default_factory=time.perf_counter)


class ReasoningMonitor:
    """Incremental checks of a streaming trace with early abort. One per stream; not reusable."""

    def __init__(
        self,
        guard: Guard,
        query: str = "",
        *,
        stage: Stage | str = Stage.REASONING,
        check_every_tokens: int | None = None,
        hold_back: bool | None = None,
        check_paragraphs: bool = True,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self.guard = guard
        # Normalised like Guard.request's input: a query no guard can judge fails here, loudly,
        # not inside the first check after text was already released downstream.
        q = normalize_text(query, what="query")
        self.query = q.value
        self.stage = Stage(stage)
        cfg = guard.config
        self.check_every_tokens = check_every_tokens or cfg.stage(self.stage).check_every_tokens
        self.hold_back = cfg.hold_back_for(self.stage) if hold_back is None else hold_back
        self.check_paragraphs = check_paragraphs
        self.request_id = request_id
        self.metadata = dict(metadata or {})
        # One id for all checks of this stream: the engine may keep the KV cache of the checked
        # prefix between checks (scoring.session_key); released when the monitor closes.
        self.metadata.setdefault("session_id", uuid.uuid4().hex)
        if q.notes:
            self.metadata["input_notes"] = [*self.metadata.get("input_notes", []), *q.notes]

        # Re-entrant: a check that completes before add_done_callback runs calls _done on the
        # feeding thread while it holds the lock (seen with zero-latency guards).
        self._lock = threading.RLock()
        self._text: list[str] = []
        self._prev_last_char = ""
        self._chars = 0
        self._tokens = 0
        # (chars, tokens) after each delta, as two parallel ascending lists (bisect by chars)
        self._delta_chars: list[int] = [0]
        self._delta_tokens: list[int] = [0]
        self._last_check_tokens = 0
        self._inflight: _Check | None = None
        self._pending = False  # a check fell due while one was in flight
        self._covered_chars = 0  # prefix length the latest ALLOWing check covered
        self._released_chars = 0  # how far downstream may read
        self._drained = 0  # how far drain() has handed out
        self._last_char = ""
        self._ready: list[Decision] = []  # completed decisions not yet returned by feed
        self._closed = False
        self.decision: Decision | None = None  # the blocking decision, once aborted
        self.last_decision: Decision | None = None
        self.abort_offset: int | None = None
        self.stats = MonitorStats(stage=self.stage)

    # -- public API ---------------------------------------------------------------------------
    @property
    def aborted(self) -> bool:
        return self.decision is not None

    @property
    def check_in_flight(self) -> Future[Decision] | None:
        """The running check's future, if any: ``await asyncio.wrap_future(f)`` (any loop) or
        ``f.result()`` to wait for the next verdict instead of polling. It completes after the
        monitor has applied the verdict; cancelling it (e.g. a ``wait_for`` timing out around
        ``wrap_future``) only stops that wait, never the check."""
        with self._lock:
            return self._inflight.view if self._inflight else None

    @property
    def text(self) -> str:
        with self._lock:
            return self._joined()

    def feed(self, delta: str) -> Decision | None:
        """Add a delta; maybe schedule a check. Returns a Decision if one completed since the last
        call (the blocking one once aborted), else None. Never waits for the guard. ``delta`` is
        str (bytes are decoded as UTF-8, None adds nothing); anything else raises GuardInputError
        before it is added."""
        t0 = time.perf_counter()
        if delta is None:
            delta = ""
        elif not isinstance(delta, str):
            delta = normalize_text(delta, what="delta").value
        try:
            with self._lock:
                if self._closed:
                    raise RuntimeError("monitor is closed")
                if self.decision is None and delta:
                    self._append(delta)
                    if not self.hold_back:  # before scheduling: a check may complete inline
                        self._released_chars = self._chars
                        self.stats.tokens_released = self._tokens
                    if self._check_due(delta):
                        self._schedule()
                return self._take_ready()
        finally:
            self.stats.feed_time_us_total += (time.perf_counter() - t0) * 1e6

    async def afeed(self, delta: str) -> Decision | None:
        """Async twin of feed (also non-blocking)."""
        return self.feed(delta)

    def drain(self) -> str:
        """Text newly allowed downstream since the last drain. Under hold-back that is text a
        completed check has covered; without it, everything fed before an abort."""
        with self._lock:
            if self._released_chars <= self._drained:
                return ""
            out = self._joined()[self._drained : self._released_chars]
            self._drained = self._released_chars
            return out

    def close(self, timeout: float | None = None) -> Decision:
        """Wait for checks in flight, run the end-of-trace check, and return the final Decision."""
        return self.guard._runtime.run(self._aclose(), timeout)

    async def aclose(self) -> Decision:
        return await self.guard._runtime.arun(self._aclose())

    def discard(self) -> None:
        """Stop without an end-of-trace check (the stream was cut off and nothing more will be
        released): pending checks are dropped and engine state kept for this stream is freed."""
        with self._lock:
            self._closed = True
            self._pending = False
        release = getattr(self.guard, "release_session", None)
        if release is not None:
            release(str(self.metadata["session_id"]))

    @property
    def held_text(self) -> str:
        """Text fed but not yet released (what hold-back is keeping back)."""
        with self._lock:
            return self._joined()[self._released_chars :]

    # -- internals (called with the lock held unless noted) ------------------------------------

    def _joined(self) -> str:
        if len(self._text) > 1:
            self._text = ["".join(self._text)]
        return self._text[0] if self._text else ""

    def _append(self, delta: str) -> None:
        self._text.append(delta)
        self._chars += len(delta)
        self._tokens += approx_tokens(delta)
        self.stats.tokens_fed = self._tokens
        self._delta_chars.append(self._chars)
        self._delta_tokens.append(self._tokens)
        self._prev_last_char, self._last_char = self._last_char, delta[-1]

    def _check_due(self, delta: str) -> bool:
        if self._tokens - self._last_check_tokens >= self.check_every_tokens:
            return True
        if not self.check_paragraphs or self._tokens <= self._last_check_tokens:
            return False
        # A paragraph end may arrive whole or split over two deltas ("\n" then "\n").
        return "\n\n" in delta or (delta.startswith("\n") and self._prev_last_char == "\n")

    def _schedule(self) -> None:
        self._last_check_tokens = self._tokens
        if self._inflight is not None:
            if self._pending:
                self.stats.checks_coalesced += 1
            self._pending = True
            return
        self._start(self._chars, self._tokens)

    def _start(self, chars: int, tokens: int) -> None:
        check = _Check(chars=chars, tokens=tokens)
        self._inflight = check
        req = self._request(self._joined()[:chars])
        check.view = Future()
        check.future = self.guard._runtime.submit(self.guard._acheck(req))
        self.stats.checks_run += 1
        # _done first: whoever waits on the view wakes to a monitor that has applied the verdict.
        check.future.add_done_callback(functools.partial(self._done, check))
        check.future.add_done_callback(functools.partial(_copy_outcome, check.view))

    def _request(self, prefix: str) -> GuardRequest:
        field_name = "reasoning" if self.stage is Stage.REASONING else "response"
        extra = {"request_id": self.request_id} if self.request_id else {}
        return GuardRequest(
            stage=self.stage, prompt=self.query, metadata=dict(self.metadata), **{field_name: prefix}, **extra
        )

    def _done(self, check: _Check, fut: Future[Decision]) -> None:
        """Runs on the engine loop thread when a check completes."""
        try:
            decision = fut.result()
        except BaseException as exc:  # Guard._acheck handles engine failures; this is a bug path
            decision = self._error_decision(exc)
        with self._lock:
            self.stats.guard_time_ms += (time.perf_counter() - check.started) * 1e3
            self.stats.tokens_checked = max(self.stats.tokens_checked, check.tokens)
            self._inflight = None
            self.last_decision = decision
            if self.decision is None:
                if decision.blocked:
                    self._abort(decision, check)
                elif decision.action is not Action.REDACT:
                    self._cover(check.chars)
                else:
                    # A redaction of a streamed prefix cannot be applied to text already sent; treat
                    # it as blocking the rest of the stream.
                    self._abort(decision, check)
            self._ready.append(decision)
            if self._pending and self.decision is None and not self._closed:
                self._pending = False
                self._start(self._chars, self._tokens)

    def _cover(self, chars: int) -> None:
        self._covered_chars = max(self._covered_chars, chars)
        if self.hold_back:
            self._released_chars = self._covered_chars
            self.stats.tokens_released = self._tokens_at(self._released_chars)

    def _abort(self, decision: Decision, check: _Check) -> None:
        self.decision = decision
        self.abort_offset = check.tokens
        self.stats.aborted = True
        self.stats.abort_offset = check.tokens
        released_tokens = self._tokens_at(self._released_chars)
        self.stats.tokens_released = released_tokens
        self.stats.detection_lag_tokens = max(0, released_tokens - check.tokens)

    def _tokens_at(self, chars: int) -> int:
        # Token count of the longest delta-boundary prefix within ``chars`` characters (exact at
        # delta boundaries). Bisect: a long stream calls this once per completed check.
        i = bisect.bisect_right(self._delta_chars, chars) - 1
        return self._delta_tokens[i] if i >= 0 else 0

    def _take_ready(self) -> Decision | None:
        if not self._ready:
            return None
        ready, self._ready = self._ready, []
        if self.decision is not None:
            return self.decision
        return ready[-1]

    def _error_decision(self, exc: BaseException) -> Decision:
        return Decision(
            action=Action.BLOCK,
            stage=self.stage,
            text=self.guard.config.refusal_message,
            reason=f"monitor_error: {exc!r}",
        )

    async def _aclose(self) -> Decision:
        """Runs on the engine loop."""
        try:
            return await self._aclose_checks()
        finally:
            release = getattr(self.guard, "release_session", None)
            if release is not None:
                release(str(self.metadata["session_id"]))
            from .metrics import observe_monitor

            observe_monitor(self.stats, guard=self.guard)

    async def _aclose_checks(self) -> Decision:
        with self._lock:
            self._closed = True
            self._pending = False
            inflight = self._inflight
        if inflight is not None and inflight.future is not None:
            # Only wait: its outcome, an error included, was applied by _done (an error blocks).
            # asyncio.wait neither raises the check's exception nor cancels it if we are cancelled.
            waiter = asyncio.wrap_future(inflight.future)
            await asyncio.wait([waiter])
            if not waiter.cancelled():
                waiter.exception()  # retrieved: no "never retrieved" noise
        with self._lock:
            if self.decision is not None:
                return self.decision
            if self.last_decision is not None and self._covered_chars >= self._chars:
                return self.last_decision
            check = _Check(chars=self._chars, tokens=self._tokens)
            req = self._request(self._joined())
            self.stats.checks_run += 1
        decision = await self.guard._acheck(req)
        with self._lock:
            self.stats.guard_time_ms += (time.perf_counter() - check.started) * 1e3
            self.stats.tokens_checked = check.tokens
            self.last_decision = decision
            if decision.blocked or decision.action is Action.REDACT:
                self._abort(decision, check)
            else:
                self._cover(check.chars)
        return decision

    def __repr__(self) -> str:
        return (
            f"ReasoningMonitor(stage={self.stage}, tokens={self._tokens}, "
            f"checks={self.stats.checks_run}, aborted={self.aborted})"
        )


def _copy_outcome(view: Future[Decision], fut: Future[Decision]) -> None:
    """Mirror a finished check onto the future handed to callers (unless they cancelled it)."""
    if fut.cancelled():
        view.cancel()
        return
    if not view.set_running_or_notify_cancel():
        return  # the caller cancelled its view: nothing to tell it
    exc = fut.exception()
    if exc is not None:
        view.set_exception(exc)
    else:
        view.set_result(fut.result())
