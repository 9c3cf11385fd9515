"""Splitting texts longer than a guard's input budget into overlapping windows.

Nothing is silently truncated: every character of a long text is inside at least one window, and
each window is judged; the policy takes the worst verdict. Overlap keeps a harmful passage that
straddles a cut whole in at least one window (as long as it is shorter than the overlap).
"""

from __future__ import annotations

Span = tuple[int, int]


def split_windows(text: str, max_chars: int, overlap: int) -> list[Span]:
    """Character spans ``[start, end)`` covering ``text``; one span when it fits."""
    if max_chars <= 0 or overlap < 0 or overlap >= max_chars:
        raise ValueError("need max_chars > overlap >= 0")
    n = len(text)
    if n <= max_chars:
        return [(0, n)]
    spans: list[Span] = []
    start = 0
    while True:
        end = min(start + max_chars, n)
        if end < n:
            # Prefer to cut at whitespace in the last tenth of the window, so words stay whole.
            cut = text.rfind(" ", end - max_chars // 10, end)
            if cut > start + overlap:
                end = cut
        spans.append((start, end))
        if end >= n:
            return spans
        start = end - overlap


def clip_context(text: str, max_chars: int) -> str:
    """``text`` cut to about ``max_chars``: its head and tail around an explicit omission marker.

    Only for context a check carries along (the user's query beside a judged reasoning trace or
    answer), never for the judged text itself, which is windowed instead. The query is judged in
    full by the prompt stage."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters of the query omitted ...]\n{text[-tail:]}"


def merge_spans(spans: list[Span]) -> list[Span]:
    """Overlapping or touching spans merged, sorted."""
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def redact_spans(text: str, spans: list[Span], placeholder: str) -> str:
    """``text`` with each (merged) span replaced by ``placeholder``."""
    pieces: list[str] = []
    pos = 0
    for s, e in merge_spans(spans):
        pieces.append(text[pos:s])
        pieces.append(placeholder)
        pos = e
    pieces.append(text[pos:])
    return "".join(pieces)
