"""JudgedWindows: what a stream's earlier checks already judged, so later checks do not judge it again.

A streamed text is checked again and again as it grows. Once it is longer than a guard's input
budget it is split into windows (windowing.py), and every window but the last is *closed*: the
text has moved past it, so its span and its text can no longer change (``split_windows`` cuts a
window from the text inside it only). A closed window judged once keeps its verdict; each later
check of the stream judges only the open tail window (which overlaps the last closed one) plus,
once, any window that closed since the check before. Guard work per check is then bounded by the
budget, not by the trace length.

Nothing is taken on trust: a verdict is reused only for the same stream, guard model and window
number *and* the same window text and request context (compared by digest), so a caller reusing a
session id for other text gets fresh verdicts. Only real judgements are kept; a failed window
(timeout, unparseable) is judged again next time. A stream's entries go when the stream is
released (``forget``); the least recently used streams go first past ``max_streams``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from ..types import GuardRequest, Verdict

__all__ = ["JudgedWindows", "context_digest", "text_digest"]


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def context_digest(request: GuardRequest) -> bytes:
    """What a window's verdict may depend on besides its text: stage, query, metadata (not the
    request id, which is new on every check of a stream)."""
    return text_digest(request.with_target("").model_dump_json(exclude={"request_id"}))


#: (guard model, window number) -> (span, context digest, text digest, verdict)
_Entry = tuple[tuple[int, int], bytes, bytes, Verdict]


class JudgedWindows:
    """Verdicts of closed windows, per stream. Thread-safe (checks of one Guard may run on the
    engine loop and on callers' loops at once)."""

    def __init__(self, max_streams: int = 4096):
        self.max_streams = max_streams
        self._streams: OrderedDict[str, dict[tuple[str, int], _Entry]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, stream: str, guard: str, index: int, span: tuple[int, int], context: bytes, text: str) -> Verdict | None:
        with self._lock:
            entries = self._streams.get(stream)
            entry = entries.get((guard, index)) if entries is not None else None
            if entry is None:
                return None
            self._streams.move_to_end(stream)
        if entry[0] != span or entry[1] != context or entry[2] != text_digest(text):
            return None
        return entry[3].model_copy(update={"reused": True})

    def put(self, stream: str, guard: str, index: int, span: tuple[int, int], context: bytes, text: str,
            verdict: Verdict) -> None:
        if not verdict.ok:  # a window nobody judged is judged again next time
            return
        entry = (span, context, text_digest(text), verdict)
        with self._lock:
            entries = self._streams.get(stream)
            if entries is None:
                entries = self._streams[stream] = {}
                while len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
            else:
                self._streams.move_to_end(stream)
            entries[(guard, index)] = entry

    def forget(self, stream: str) -> None:
        with self._lock:
            self._streams.pop(stream, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)
