"""Localising a flagged window with the guard itself: split it into pieces, judge the pieces as
one batch (with the query as context), keep the pieces the guard flags on their own.

Pieces are sentences, or lines for code and lists (a line-structured text: fenced code, bullets,
numbered items, or mostly short lines). At most ``max_pieces`` per window: beyond that, adjacent
pieces are merged into that many groups, so the cost is bounded by ``max_pieces`` guard calls per
window (batched: one engine call).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from ..types import Verdict
from ..windowing import Span

#: a sentence ends at . ! ? (closing quotes or brackets may follow) before whitespace, or at a blank line
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_LISTISH = re.compile(r"^\s*(?:[-*+•]|\d+[.)]|```|#)", re.MULTILINE)

#: judge(texts) -> one verdict per text, in order (the Guard runs them as one batch)
JudgePieces = Callable[[list[str]], Awaitable[list[Verdict]]]


def line_structured(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    if "```" in text or len(_LISTISH.findall(text)) >= 2:
        return True
    return sum(len(ln) < 80 and not ln.rstrip().endswith((".", "!", "?")) for ln in lines) > len(lines) / 2


def split_pieces(text: str, max_pieces: int) -> list[Span]:
    """Spans of the pieces of ``text`` (whitespace between pieces belongs to the piece before),
    at most ``max_pieces``, covering every non-blank character."""
    cuts: list[int] = [0]
    if line_structured(text):
        cuts += [m.end() for m in re.finditer(r"\n", text)]
    else:
        cuts += [m.end() for m in _SENTENCE_END.finditer(text)]
    cuts = sorted({c for c in cuts if 0 <= c < len(text)}) + [len(text)]
    spans = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if text[a:b].strip()]
    if not spans:
        return [(0, len(text))] if text.strip() else []
    spans[0] = (0, spans[0][1])
    spans[-1] = (spans[-1][0], len(text))
    return _group(spans, max_pieces)


def _group(spans: list[Span], n: int) -> list[Span]:
    """Adjacent spans merged into at most ``n`` groups of about equal length."""
    if len(spans) <= n:
        return spans
    target = (spans[-1][1] - spans[0][0]) / n
    out: list[Span] = []
    start = spans[0][0]
    for _, e in spans[:-1]:
        if len(out) < n - 1 and e - start >= target:
            out.append((start, e))
            start = e
    out.append((start, spans[-1][1]))
    return out


async def localise(
    text: str, window: Span, judge: JudgePieces, threshold: float, max_pieces: int
) -> tuple[list[tuple[Span, Verdict]], int]:
    """The pieces of ``text[window]`` the guard flags on its own (offsets in ``text``, with
    their verdicts), and how
    many pieces were judged. Raises LocaliseFailed when any piece got no real verdict: the caller
    then redacts the whole window (never less than a whole-window redaction)."""
    ws, we = window
    pieces = split_pieces(text[ws:we], max_pieces)
    if len(pieces) <= 1:  # one sentence: the window is the piece
        return [], len(pieces)
    verdicts = await judge([text[ws + s : ws + e] for s, e in pieces])
    if len(verdicts) != len(pieces):
        raise LocaliseFailed(f"{len(verdicts)} verdicts for {len(pieces)} pieces")
    bad = next((v for v in verdicts if not v.ok), None)
    if bad is not None:
        raise LocaliseFailed(f"a piece got no verdict ({bad.failure or 'unparseable'}: {bad.parse_error})")
    flagged = [((ws + s, ws + e), v) for (s, e), v in zip(pieces, verdicts, strict=True) if v.risk >= threshold]
    return [(_trim(text, sp), v) for sp, v in flagged], len(pieces)


def _trim(text: str, span: Span) -> Span:
    """A piece without its trailing whitespace (the redaction keeps the text's layout)."""
    s, e = span
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


class LocaliseFailed(Exception):
    """A localising check gave no verdict: the window is redacted whole."""


__all__ = ["JudgePieces", "LocaliseFailed", "line_structured", "localise", "split_pieces"]
