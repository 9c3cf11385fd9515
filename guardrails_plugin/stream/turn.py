"""TurnGuard: the rules of one guarded model turn, written once. Sans-IO.

It is fed the typed parts of a turn (extract.py): reasoning, answer and tool-call deltas, each
with its choice index, plus the wire item that carried them (a chunk, a token), and the end of
the turn. It answers with the checks that are due (the caller runs them and hands back each
Decision), the items that may be released now, in order, and the Decision that stops the turn.

The rules:

* **Tracks.** Per choice index (``n>1`` gets one set per choice): reasoning segments and one
  answer track (track.py: intervals, paragraph ends, coalescing, end-of-text checks).
* **Segments and the gate.** At the first answer or tool-call part after reasoning, that
  reasoning segment is closed and its end-of-text check is due; with ``gate_answer`` the answer
  is held until that check has passed, so no answer follows a chain of thought nobody finished
  checking. Reasoning after the answer began opens a new segment.
* **Hold-back.** An item is released once every track it fed has covered its part (for a track
  without hold-back: at once). Items leave in the order they came.
* **Tool calls** are model output: judged with the answer (same track, same text) and, with
  ``hold_tools``, held (with everything after them) until the whole turn has passed its checks,
  whatever the answer's hold-back: a blocked turn loses its tool calls, not even a fragment of
  their arguments goes out.
* **Stops.** The first BLOCK of any check stops the turn, as does reasoning of a shape nobody can
  read under a closed fail mode. Nothing is released after a stop. A REDACT stops it too, unless
  the owner can write edited items (``redact_edits``) and the track holds its text back:
* **Redaction keeps the stream going** (issue 26). A REDACT's spans apply to the text released
  from then on: an item whose parts a span touches leaves as ``Edited(item, parts)`` with the
  redacted part texts (the integration writes them into its wire item); text already released is
  never rewritten; later text is still judged (a later BLOCK still stops). Each track holds back
  the longest detector match (``hold_chars``), so a value split over deltas is never partly
  released. A tool call whose arguments a span touches is dropped (``dropped``; ``notes`` says so),
  never run with altered arguments, unless ``redaction.tool_calls`` is ``edit``.
* **Clean-up.** ``tracks`` lists every track: the caller frees their sessions (KV caches) and
  records their stats (detection lag: tokens released past the blocking prefix) when done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..content import normalize_text
from ..types import Action, Decision, GuardRequest, Stage
from .extract import Part, PartKind
from .track import Check, MonitorStats, Track, stops

if TYPE_CHECKING:
    from ..config import GuardConfig

Unreadable = Callable[[Stage, str], Decision]


class _Choice:
    __slots__ = ("segments", "answer")

    def __init__(self) -> None:
        self.segments: list[Track] = []
        self.answer: Track | None = None


class _Held:
    __slots__ = ("item", "needs", "ends", "parts")

    def __init__(self, item: Any, needs: list[tuple[Track, int]], ends: list[tuple[Track, int]],
                 parts: list[tuple[Part, Track | None, int, int]]):
        self.item = item
        self.needs = needs  # (track, chars) that must be covered before the item may go
        self.ends = ends  # (track, chars) released with it
        self.parts = parts  # each part with the track range it fed (None: judged by no track)


@dataclass(frozen=True)
class Edited:
    """A released item whose text a REDACT changed: ``parts`` are its parts, in the order they were
    fed, with the text to send instead (a part whose text is all inside a span that began in an
    earlier part becomes empty). The integration writes them into ``item`` (its own wire format)."""

    item: Any
    parts: list[Part]


#: a need met only when the whole turn has passed: tool calls leave with a clean turn or never
_WHOLE_TURN: tuple[Any, int] = (None, 0)


class TurnGuard:
    """See the module docstring. Not thread-safe: a driver (drive.py) serialises calls."""

    def __init__(
        self,
        config: GuardConfig,
        query: Any = "",
        *,
        reasoning: bool = True,
        response: bool = True,
        hold_back_reasoning: bool | None = None,
        hold_back_answer: bool | None = None,
        hold_tools: bool = True,
        gate_answer: bool = True,
        check_every_tokens: int | None = None,
        unreadable: Unreadable | None = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        redact_edits: bool = False,
        hold_chars: Callable[[Stage], int] | None = None,
    ):
        q = normalize_text(query, what="query")
        self.query = q.value
        self.judges = {Stage.REASONING: reasoning, Stage.RESPONSE: response}
        self._hold = {
            Stage.REASONING: config.hold_back_for(Stage.REASONING) if hold_back_reasoning is None else hold_back_reasoning,
            Stage.RESPONSE: config.hold_back_for(Stage.RESPONSE) if hold_back_answer is None else hold_back_answer,
        }
        self._every = {s: check_every_tokens or config.stage(s).check_every_tokens for s in self._hold}
        self.hold_tools = hold_tools
        self.gate_answer = gate_answer
        self._refusal = config.refusal_message
        self._config = config
        self.redact_edits = redact_edits
        self._hold_chars = {s: (hold_chars(s) if hold_chars is not None and config.may_redact(s) else 0) for s in self._hold}
        #: tool-call items dropped because a redaction touched their arguments
        self.dropped: list[Any] = []
        self.notes: list[str] = []
        self._unreadable = unreadable
        self.request_id = request_id
        self.metadata = dict(metadata or {})
        if q.notes:
            self.metadata["input_notes"] = list(q.notes)
        self.choices: dict[int, _Choice] = {}
        self.tracks: list[Track] = []
        self._held: deque[_Held] = deque()
        self.stop: Decision | None = None
        self.ended = False
        self.last_item: Any = None

    # -- parts in -------------------------------------------------------------------------------
    def feed(self, item: Any, parts: Iterable[Part]) -> list[Check]:
        """Take one wire item and the parts it carries; return the checks now due."""
        if self.stop is not None or self.ended:
            return []
        self.last_item = item
        due: list[Check] = []
        needs: list[tuple[Track, int]] = []
        ends: list[tuple[Track, int]] = []
        fed: list[tuple[Part, Track | None, int, int]] = []
        for p in parts:
            if not p.text:
                fed.append((p, None, 0, 0))
                continue
            choice = self.choices.get(p.index) or self.choices.setdefault(p.index, _Choice())
            if p.kind is PartKind.REASONING:
                if self.judges[Stage.REASONING]:
                    self._add(self._segment(choice), p, due, needs, ends, fed)
                else:
                    fed.append((p, None, 0, 0))
            elif p.kind is PartKind.UNKNOWN:
                if self.judges[Stage.REASONING] and not self._unknown(p.text):
                    return []
                fed.append((p, None, 0, 0))
            elif p.kind is PartKind.UNKNOWN_ANSWER:  # the response stage's fail mode (else the reasoning's)
                stage = Stage.RESPONSE if self.judges[Stage.RESPONSE] else Stage.REASONING
                if self.judges[stage] and not self._unknown(p.text, stage):
                    return []
                fed.append((p, None, 0, 0))
            else:
                seg = choice.segments[-1] if choice.segments else None
                if seg is not None and self.gate_answer:
                    if not seg.closed:  # the answer starts: judge the whole reasoning before it shows
                        check = seg.close()
                        if check is not None:
                            due.append(check)
                    if seg.covered < seg.chars:
                        needs.append((seg, seg.chars))
                if self.judges[Stage.RESPONSE]:
                    track = choice.answer or self._new_track(Stage.RESPONSE, choice)
                    self._add(track, p, due, needs, ends, fed)
                    if p.kind is PartKind.TOOL_CALL and self.hold_tools:
                        needs.append(_WHOLE_TURN)
                else:
                    fed.append((p, None, 0, 0))
        self._held.append(_Held(item, needs, ends, fed))
        return due

    def _add(self, track: Track, part: Part, due: list[Check], needs: list, ends: list, fed: list) -> None:
        start = track.chars
        check = track.add(part.text)
        if check is not None:
            due.append(check)
        ends.append((track, track.chars))
        fed.append((part, track, start, track.chars))
        if track.hold_back:
            needs.append((track, track.chars))

    def _segment(self, choice: _Choice) -> Track:
        if not choice.segments or choice.segments[-1].closed:  # reasoning after the answer began
            self._new_track(Stage.REASONING, choice)
        return choice.segments[-1]

    def _new_track(self, stage: Stage, choice: _Choice) -> Track:
        track = Track(stage, every=self._every[stage], hold_back=self._hold[stage], redacts=self.redact_edits,
                      hold_chars=self._hold_chars[stage])
        self.tracks.append(track)
        if stage is Stage.REASONING:
            choice.segments.append(track)
        else:
            choice.answer = track
        return track

    def _unknown(self, why: str, stage: Stage = Stage.REASONING) -> bool:
        """Content nobody can read: ``stage``'s fail mode decides. True to go on."""
        if self._unreadable is None:
            d = Decision(action=Action.BLOCK, stage=stage, text=self._refusal, reason=f"guard_bad_input: {why}")
        else:
            d = self._unreadable(stage, why)
        if stops(d):
            self.abort(d)
            return False
        return True

    def end(self) -> list[Check]:
        """The turn is over (upstream finished): the end-of-text checks now due."""
        if self.ended:
            return []
        self.ended = True
        if self.stop is not None:
            return []
        return [c for t in self.tracks if not t.closed and (c := t.close()) is not None]

    # -- verdicts in ------------------------------------------------------------------------------
    def complete(self, check: Check, decision: Decision) -> list[Check]:
        """Apply a check's Decision; return the follow-up checks now due."""
        track = check.track
        follow = track.done(check, decision)
        if track.decision is not None:
            self.abort(track.decision)
        if self.stop is not None or follow is None:
            return []
        return [follow]

    def abort(self, decision: Decision) -> None:
        """Stop the turn with ``decision`` (the first stop wins; later ones change nothing)."""
        if self.stop is None:
            self.stop = decision

    # -- out ---------------------------------------------------------------------------------------
    def release(self) -> list[Any]:
        """The items that may go downstream now, in order (none once stopped)."""
        out: list[Any] = []
        held = self._held
        passed = self.ended and self.stop is None and all(t.settled for t in self.tracks)
        while held and self.stop is None:
            h = held[0]
            if any((t.safe() < n) if t is not None else not passed for t, n in h.needs):
                break
            held.popleft()
            for t, n in h.ends:
                t.release(n)
            item = self._edited(h)
            if item is not None:
                out.append(item)
        return out

    def _edited(self, h: _Held) -> Any:
        """The item as it may leave: as it came, ``Edited`` with redacted part texts, or None when
        it is a tool call whose arguments a redaction touched (dropped, unless the user opted in)."""
        if not any(t is not None and t.spans and any(sp.start < e and sp.end > s for sp in t.spans)
                   for _, t, s, e in h.parts):
            return h.item
        parts: list[Part] = []
        for p, t, s, e in h.parts:
            if t is None or not t.spans:
                parts.append(p)
                continue
            rc = self._config.stage(t.stage).redaction
            text = t.redacted(s, e, rc.strategy, self._config.redact_placeholder, rc.hash_salt)
            if p.kind is PartKind.TOOL_CALL and text != p.text and rc.tool_calls == "drop":
                self.dropped.append(h.item)
                note = "a tool call was dropped: a redaction touched its arguments"
                if note not in self.notes:
                    self.notes.append(note)
                return None
            parts.append(Part(p.kind, text, p.index))
        return Edited(h.item, parts)

    @property
    def held(self) -> int:
        """How many items are waiting."""
        return len(self._held)

    @property
    def settled(self) -> bool:
        """Stopped, or ended with every end-of-text verdict in."""
        return self.stop is not None or (self.ended and all(t.settled for t in self.tracks))

    def request(self, check: Check) -> GuardRequest:
        """The GuardRequest that runs ``check``."""
        track = check.track
        meta = {**self.metadata, "session_id": track.session_id}
        extra = {"request_id": self.request_id} if self.request_id else {}
        text = {"reasoning" if track.stage is Stage.REASONING else "response": check.text}
        return GuardRequest(stage=track.stage, prompt=self.query, metadata=meta, **text, **extra)

    # -- inspection ----------------------------------------------------------------------------------
    def stopped_track(self) -> Track | None:
        return next((t for t in self.tracks if t.decision is not None and t.decision is self.stop), None)

    def track(self, stage: Stage, index: int = 0) -> Track | None:
        """The stopped track of ``stage`` if any, else the latest one of choice ``index``."""
        stopped = self.stopped_track()
        if stopped is not None and stopped.stage is stage:
            return stopped
        choice = self.choices.get(index)
        if choice is None:
            return None
        if stage is Stage.REASONING:
            return choice.segments[-1] if choice.segments else None
        return choice.answer

    reasoning = property(lambda self: self.track(Stage.REASONING), doc="track(Stage.REASONING)")
    answer = property(lambda self: self.track(Stage.RESPONSE), doc="track(Stage.RESPONSE)")

    def stats(self, stage: Stage, index: int = 0) -> MonitorStats | None:
        t = self.track(stage, index)
        return t.stats if t is not None else None

    def released_text(self, stage: Stage, index: int = 0) -> str:
        """The ``stage`` text of choice ``index`` released so far (answer: with tool calls)."""
        choice = self.choices.get(index)
        if choice is None:
            return ""
        tracks = choice.segments if stage is Stage.REASONING else [choice.answer] if choice.answer else []
        out = []
        for t in tracks:
            rc = self._config.stage(t.stage).redaction
            out.append(t.redacted(0, t.released, rc.strategy, self._config.redact_placeholder, rc.hash_salt))
        return "".join(out)

    def __repr__(self) -> str:
        return f"TurnGuard(tracks={len(self.tracks)}, held={len(self._held)}, stop={self.stop and self.stop.reason!r})"
