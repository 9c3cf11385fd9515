"""Turning whatever a caller hands us into text a guard can judge, or a clear typed error.

Bytes are decoded as UTF-8 with invalid sequences replaced by U+FFFD (and the replacement recorded),
lone surrogates in str input become '?' (tokenizers and HTTP bodies cannot carry them; also
recorded), and chat message lists
keep their text parts while recording what was not guarded (images, audio, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import GuardInputError


@dataclass
class Text:
    """Normalised text plus notes about what normalisation changed or skipped."""

    value: str
    notes: list[str] = field(default_factory=list)


def normalize_text(content: Any, *, what: str = "text") -> Text:
    """A ``Text`` from str, bytes, or a chat-message / content-part list. Raises GuardInputError
    for anything else (None included: a check of nothing is a caller bug, not an ALLOW)."""
    notes: list[str] = []
    if isinstance(content, str):
        value = content
    elif isinstance(content, (bytes, bytearray, memoryview)):
        raw = bytes(content)
        value = raw.decode("utf-8", errors="replace")
        if "\ufffd" in value and b"\xef\xbf\xbd" not in raw:
            notes.append(f"{what}: invalid UTF-8 bytes replaced with U+FFFD")
    elif isinstance(content, Sequence) and not isinstance(content, str):
        value = _text_of_parts(content, notes, what)
    elif isinstance(content, Mapping):
        value = _text_of_parts([content], notes, what)
    else:
        raise GuardInputError(
            f"{what} must be str, bytes or a list of messages/content parts, "
            f"got {type(content).__name__}"
        )
    if _has_surrogates(value):
        value = value.encode("utf-8", errors="replace").decode("utf-8")
        notes.append(f"{what}: lone surrogates replaced with '?'")
    return Text(value, notes)


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _as_parts(content: Any, what: str, i: int) -> Sequence[Any]:
    """A message's content as a list of parts (a str or a single part dict is one part)."""
    if isinstance(content, (str, Mapping)):
        return [content]
    if isinstance(content, (list, tuple)):
        return content
    raise GuardInputError(f"{what}[{i}]: message content of type {type(content).__name__}")


def _text_of_parts(parts: Sequence[Any], notes: list[str], what: str) -> str:
    """Text of OpenAI / LangChain style messages or content parts; non-text parts are noted."""
    texts: list[str] = []
    for i, part in enumerate(parts):
        if isinstance(part, str):
            texts.append(part)
            continue
        content = getattr(part, "content", None) if not isinstance(part, Mapping) else None
        if content is not None:  # a LangChain BaseMessage
            texts.append(_text_of_parts(_as_parts(content, what, i), notes, what))
            if getattr(part, "tool_calls", None):
                notes.append(f"{what}[{i}]: tool calls not guarded as text")
            continue
        if not isinstance(part, Mapping):
            raise GuardInputError(f"{what}[{i}]: unsupported part type {type(part).__name__}")
        kind = part.get("type")
        # a chat message {"role", "content"} (Responses API input items say type "message")
        if "content" in part and kind in (None, "message"):
            inner = part["content"]
            if inner is None:
                if part.get("tool_calls"):
                    notes.append(f"{what}[{i}]: tool calls not guarded as text")
                continue
            texts.append(_text_of_parts(_as_parts(inner, what, i), notes, what))
            if part.get("tool_calls"):
                notes.append(f"{what}[{i}]: tool calls not guarded as text")
            continue
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _REASONING_TYPES and (r := reasoning_text(part)) is not None:
            texts.append(r)
        else:
            notes.append(f"{what}[{i}]: {kind or 'untyped'} part not guarded")
    return "\n".join(t for t in texts if t)


#: block types that carry reasoning; "redacted_thinking" is encrypted (never shown, nothing to read)
_REASONING_TYPES = ("reasoning", "thinking", "redacted_thinking")
_TEXT_PART_TYPES = (None, "text", "summary_text", "reasoning_text", "thinking", "reasoning")


def reasoning_text(value: Any) -> str | None:
    """The text of reasoning in any shape we know, or None for a shape we do not know.

    Known: a str; a list of such values or text parts; a block ``{"type": "reasoning" |
    "thinking", "reasoning" | "thinking" | "text": ...}`` (LangChain v1, Anthropic); an OpenAI
    Responses reasoning item ``{"type": "reasoning", "summary": [{"type": "summary_text",
    "text": ...}], "content": [{"type": "reasoning_text", "text": ...}]}``; encrypted reasoning
    (``redacted_thinking``, ``encrypted_content`` alone), which carries no text. Objects are read
    like mappings. Callers that judge send None to the stage's fail mode: unknown is unsafe."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            t = reasoning_text(v)
            if t is None:
                return None
            out.append(t)
        return "".join(out)
    if not isinstance(value, Mapping) and not hasattr(value, "__dict__"):
        return None  # a number, bytes, ...: not a shape reasoning comes in
    get = value.get if isinstance(value, Mapping) else (lambda k: getattr(value, k, None))
    kind = get("type")
    if kind == "redacted_thinking":
        return ""
    if kind not in _TEXT_PART_TYPES:
        return None
    present = False
    for name in ("reasoning", "thinking", "text"):  # one text field; the first one set wins
        field_value = get(name)
        if field_value is not None and field_value != "":
            return reasoning_text(field_value)
        present = present or field_value is not None
    out = []
    for name in ("summary", "content") if kind is not None else ("summary",):
        field_value = get(name)
        t = reasoning_text(field_value)
        if t is None:
            return None
        present = present or field_value is not None
        out.append(t)
    # a typed block without text is a known empty delta; an untyped value without any is unknown
    return "".join(out) if present or kind is not None else None
