"""Track: one stage's streamed text under incremental checks. Sans-IO: it says which check is due
and is told each check's outcome; running checks is the caller's job (monitor.py, drive.py).

A check falls due every ``every`` tokens and at paragraph ends. When one falls due while another
is in flight, the two coalesce into one check of the newest prefix (a guard can never keep up
with a decoder token by token, so checking stale prefixes only adds lag). ``close()`` asks for
the end-of-text check unless a completed check already covers everything; it starts at once, even
beside a check still in flight, because whoever waits on the end (an answer gated on the
reasoning) would otherwise wait for two guard calls back to back. A held-back text checks its first
delta at once: nothing of it shows before a check, so its first check must not wait an interval.

Hold-back decides what may be released: with it, only text an ALLOWing check has covered; without
it, everything (a blocking check then stops the stream, and the tokens released past the blocking
prefix are the detection lag this track reports). BLOCK stops a track; so does REDACT, except on a
held-back track that ``redacts`` (its owner can write edited text): there a REDACT's spans are
kept, the checked prefix counts as covered, and the text released from then on is the redacted
form (``redacted``); text already released is never rewritten, and later text is still judged.

``hold_chars``: a held-back track keeps this much of its covered text back until its end check
(the longest value a span detector matches), and never releases into a span that is cut by the
release point or that reaches the judged end (a value may still be growing): a card number split
over deltas is judged whole before any of it goes out.
"""

from __future__ import annotations

import bisect
import time
import uuid

from pydantic import BaseModel

from ..redaction.apply import merge, redact_slice
from ..types import Action, Decision, RedactedSpan, Stage
from .extract import approx_tokens


class MonitorStats(BaseModel):
    """What a monitored text did; the basis of the monitor benchmark and metrics."""

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


def stops(decision: Decision) -> bool:
    """The stop rule of a stream: BLOCK (or a held ESCALATE) and REDACT end it; a redaction of a
    streamed prefix cannot be applied to text already sent."""
    return decision.blocked or decision.action is Action.REDACT


class Check:
    """A check the owner must run: the track's first ``chars`` characters (``tokens`` tokens)."""

    __slots__ = ("track", "chars", "tokens", "final", "started")

    def __init__(self, track: Track, final: bool):
        self.track = track
        self.chars = track.chars
        self.tokens = track.tokens
        self.final = final
        self.started = time.perf_counter()

    @property
    def text(self) -> str:
        return self.track.text[: self.chars]

    def __repr__(self) -> str:
        return f"Check({self.track.stage}, tokens={self.tokens}, final={self.final})"


class Track:
    """See the module docstring. Not thread-safe: the owner serialises calls."""

    def __init__(
        self, stage: Stage, *, every: int, hold_back: bool, paragraphs: bool = True, session_id: str | None = None,
        redacts: bool = False, hold_chars: int = 0,
    ):
        self.stage = stage
        self.redacts = redacts and hold_back  # a released prefix cannot be edited: only held text is
        self.hold_chars = hold_chars if hold_back else 0
        self.spans: list[RedactedSpan] = []  # every REDACT's spans so far (track offsets), merged
        self.redaction: Decision | None = None  # the latest REDACT that kept the track going
        self._spans_at = 0  # chars of the newest check whose spans are in ``spans``
        self.every = every
        self.hold_back = hold_back
        self.paragraphs = paragraphs
        #: one id for all checks of this text: the engine may keep the KV cache of the checked
        #: prefix between checks; the owner releases it when the track is done
        self.session_id = session_id or uuid.uuid4().hex
        self._parts: list[str] = []
        self.chars = 0
        self.tokens = 0
        # (chars, tokens) after each delta, as two parallel ascending lists (bisect by chars)
        self._delta_chars = [0]
        self._delta_tokens = [0]
        self._last = ""  # last character fed
        self._last_check_tokens = 0
        self.inflight: Check | None = None  # the newest check running
        self.running = 0  # checks running (the end-of-text check may run beside an older one)
        self._pending = False  # a check fell due while one was in flight
        self.covered = 0  # prefix length (chars) the latest ALLOWing check covered
        self.released = 0  # prefix length (chars) let downstream
        self.closed = False
        self.decision: Decision | None = None  # the stopping decision (BLOCK or REDACT)
        self.last_decision: Decision | None = None
        self.abort_offset: int | None = None
        self.detection_lag: int | None = None
        self.checks_run = 0
        self.checks_coalesced = 0
        self.guard_time_ms = 0.0
        self.tokens_checked = 0
        self.feed_time_us = 0.0  # maintained by owners that time their feeds

    @property
    def text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def settled(self) -> bool:
        """Closed, and no check running or owed: its final word is in."""
        return self.closed and self.running == 0

    def add(self, delta: str) -> Check | None:
        """Append ``delta``; return the check to start now, if one is due and none is in flight."""
        self._parts.append(delta)
        self.chars += len(delta)
        self.tokens += approx_tokens(delta)
        self._delta_chars.append(self.chars)
        self._delta_tokens.append(self.tokens)
        prev, self._last = self._last, delta[-1]
        if self.tokens - self._last_check_tokens >= self.every or (self.hold_back and self.checks_run == 0):
            return self._due()
        if self.paragraphs and self.tokens > self._last_check_tokens and (
            # a paragraph end may arrive whole or split over two deltas ("\n" then "\n")
            "\n\n" in delta or (prev == "\n" and delta[0] == "\n")
        ):
            return self._due()
        return None

    def _due(self) -> Check | None:
        self._last_check_tokens = self.tokens
        if self.inflight is not None:
            if self._pending:
                self.checks_coalesced += 1
            self._pending = True
            return None
        return self._start(final=False)

    def _start(self, final: bool) -> Check:
        check = self.inflight = Check(self, final)
        self.checks_run += 1
        self.running += 1
        return check

    def done(self, check: Check, decision: Decision) -> Check | None:
        """Apply a completed check; return the follow-up check to start, if one is owed."""
        self.guard_time_ms += (time.perf_counter() - check.started) * 1e3
        self.tokens_checked = max(self.tokens_checked, check.tokens)
        self.running -= 1
        if self.inflight is check:
            self.inflight = None
        self.last_decision = decision
        if self.decision is None:
            if self.redacts and decision.action is Action.REDACT and decision.redaction is not None:
                # the spans of the checked prefix are known: it is covered, in its redacted form. The
                # newest check saw the most text, so over text not yet released its spans replace
                # older ones (a sentence localised around a half-streamed value gives way to the
                # value's exact span); spans already (partly) released stay.
                new = list(decision.redaction.spans)
                if check.chars >= self._spans_at:
                    self._spans_at = check.chars
                    kept = [sp for sp in self.spans if sp.start < self.released]
                else:  # an older check landing late: the newer REDACT judged a superset of its text
                    kept, new = self.spans, []
                self.spans = merge([*kept, *new])
                self.redaction = decision
                self.covered = max(self.covered, check.chars)
            elif stops(decision):
                self._abort(decision, check)
            else:
                self.covered = max(self.covered, check.chars)
        if self.decision is not None or self.inflight is not None:
            return None
        if self.closed:
            return None if self.covered >= self.chars else self._start(final=True)
        if self._pending:
            self._pending = False
            return self._start(final=False)
        return None

    def close(self) -> Check | None:
        """No more text: return the end-of-text check if one is owed (started beside a check in
        flight that does not cover everything; that one's verdict still counts)."""
        self.closed = True
        self._pending = False
        if self.decision is not None:
            return None
        if self.inflight is not None and self.inflight.chars >= self.chars:
            return None  # the check in flight covers everything
        if self.inflight is None and self.last_decision is not None and self.covered >= self.chars:
            return None
        return self._start(final=True)

    def release(self, chars: int) -> None:
        self.released = max(self.released, chars)

    def safe(self) -> int:
        """How far the text may be released now: the covered prefix, less ``hold_chars`` and any
        span the cut would split or that reaches the judged end, until the end check is in."""
        n = self.covered
        if self.hold_chars == 0 and not self.spans:
            return n
        if self.settled and n >= self.chars:
            return n  # the end check covered everything: nothing can grow any more
        n -= self.hold_chars
        for sp in self.spans:
            if sp.start < n < sp.end or (sp.end >= self.covered and sp.start < n):
                n = sp.start
        return max(n, min(self.released, self.covered))

    def redacted(self, start: int, end: int, strategy: str, placeholder: str, salt: str | None = None) -> str:
        """``text[start:end]`` as released: with this track's spans replaced."""
        return redact_slice(self.text, self.spans, start, end, strategy, placeholder, salt)

    def _abort(self, decision: Decision, check: Check) -> None:
        self.decision = decision
        self.abort_offset = check.tokens
        self.detection_lag = max(0, self.tokens_at(self.released) - check.tokens)

    def tokens_at(self, chars: int) -> int:
        """Tokens in the longest delta-boundary prefix within ``chars`` characters."""
        i = bisect.bisect_right(self._delta_chars, chars) - 1
        return self._delta_tokens[i] if i >= 0 else 0

    @property
    def stats(self) -> MonitorStats:
        """A snapshot of what this track did."""
        return MonitorStats(
            stage=self.stage, checks_run=self.checks_run, checks_coalesced=self.checks_coalesced,
            guard_time_ms=self.guard_time_ms, tokens_fed=self.tokens, tokens_released=self.tokens_at(self.released),
            tokens_checked=self.tokens_checked, aborted=self.decision is not None, abort_offset=self.abort_offset,
            detection_lag_tokens=self.detection_lag, feed_time_us_total=self.feed_time_us,
        )

    @property
    def outcome(self) -> Decision | None:
        """The stopping decision, else the latest one (the end-of-text verdict once settled)."""
        return self.decision or self.last_decision

    def __repr__(self) -> str:
        return f"Track({self.stage}, tokens={self.tokens}, checks={self.checks_run}, stopped={self.decision is not None})"
