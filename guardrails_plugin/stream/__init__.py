"""Guarding streamed model turns, sans-IO at the core.

* ``extract``: typed parts (reasoning, answer, tool call, unknown) out of every wire format.
* ``track``: one stage's text under incremental checks (intervals, coalescing, hold-back).
* ``turn``: ``TurnGuard``, the rules of a whole turn (segments, gate, tool calls, stops).
* ``monitor``: ``ReasoningMonitor`` (one streamed text, checks running) and ``StreamChecks``.
* ``drive``: ``TurnRunner`` plus the sync / async drivers the integrations use.
"""

from .drive import TurnRunner, Verdicts, adrive, ajudge, drive, judge
from .extract import Part, PartKind, approx_tokens, extract_deltas, parts_of, tool_call_text
from .monitor import MonitorStats, ReasoningMonitor, StreamChecks
from .track import Check, Track
from .turn import Edited, TurnGuard

__all__ = [
    "Check", "Edited", "MonitorStats", "Part", "PartKind", "ReasoningMonitor", "StreamChecks", "Track", "TurnGuard",
    "TurnRunner", "Verdicts", "adrive", "ajudge", "approx_tokens", "drive", "extract_deltas", "judge",
    "parts_of", "tool_call_text",
]
