"""Writing a redaction: spans of a text replaced by a strategy's replacement.

The replacement of each span comes from Presidio's anonymizer operators (replace / mask / hash),
so a detector span and a guard-localised span are rewritten the same way. Without Presidio only
the ``redact`` strategy is available (the placeholder), which is what a default config uses.

``replacement`` is per span, so the stream layer can write the redacted form of any slice of a
text (a span's replacement goes where the span starts; text already released is never rewritten).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ..errors import GuardConfigError
from ..types import RedactedSpan
from .detectors import EXTRA_HINT


def replacement(value: str, span: RedactedSpan, strategy: str, placeholder: str, salt: str | None = None) -> str:
    """What ``value`` (the text of ``span``) becomes under ``strategy``."""
    if strategy == "redact":
        return placeholder
    if strategy == "type":
        return f"<{span.category or 'REDACTED'}>"
    op = {"mask": ("mask", {"masking_char": "*", "chars_to_mask": len(value), "from_end": False}),
          "hash": ("hash", {"hash_type": "sha256", **({"salt": salt} if salt else {})})}.get(strategy)
    if op is None:
        raise GuardConfigError(f"unknown redaction strategy {strategy!r}")
    return _anonymize(value, *op)


def _anonymize(value: str, operator: str, params: dict[str, Any]) -> str:
    try:
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult
    except ImportError:
        raise GuardConfigError(f"strategy {operator!r}: {EXTRA_HINT}") from None
    result = [RecognizerResult(entity_type="REDACTED", start=0, end=len(value), score=1.0)]
    return _engine().anonymize(text=value, analyzer_results=result,
                               operators={"DEFAULT": OperatorConfig(operator, params)}).text


@functools.lru_cache(maxsize=1)
def _engine() -> Any:
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def merge(spans: Sequence[RedactedSpan]) -> list[RedactedSpan]:
    """Spans sorted, overlapping ones merged (the first keeps its labels)."""
    out: list[RedactedSpan] = []
    for sp in sorted(spans, key=lambda s: (s.start, -s.end)):
        if out and sp.start < out[-1].end:
            if sp.end > out[-1].end:
                out[-1] = out[-1].model_copy(update={"end": sp.end})
        else:
            out.append(sp)
    return out


def apply(text: str, spans: Sequence[RedactedSpan], strategy: str, placeholder: str, salt: str | None = None) -> str:
    """``text`` with every span replaced."""
    return redact_slice(text, spans, 0, len(text), strategy, placeholder, salt)


def redact_slice(
    text: str, spans: Sequence[RedactedSpan], start: int, end: int, strategy: str, placeholder: str,
    salt: str | None = None,
) -> str:
    """The redacted form of ``text[start:end]``: a span's replacement is written where the span
    starts; the rest of a span that began before ``start`` is dropped."""
    out: list[str] = []
    pos = start
    for sp in merge(spans):
        if sp.end <= start or sp.start >= end:
            continue
        if sp.start >= pos:
            out.append(text[pos : sp.start])
            out.append(replacement(text[sp.start : sp.end], sp, strategy, placeholder, salt))
        pos = max(pos, min(sp.end, end))
    out.append(text[pos:end])
    return "".join(out)


__all__ = ["apply", "merge", "redact_slice", "replacement"]
