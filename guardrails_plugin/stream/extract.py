"""Typed parts out of a model turn, whatever the wire format calls them.

Reasoning arrives under several names: LangChain content blocks of type "reasoning" (v1) or
"thinking" (Anthropic-style), ``additional_kwargs["reasoning_content"]`` (v0, DeepSeek / Qwen via
OpenAI-compatible servers) or ``additional_kwargs["reasoning"]`` (OpenAI Responses summaries),
OpenAI-style ``delta.reasoning_content`` and vLLM's newer ``delta.reasoning``. A guard that reads
only one of them lets the others through unguarded, so every integration reads them here, and a
reasoning shape we do not know becomes an UNKNOWN part that the turn guard sends to the fail mode.

Tool-call arguments are model output as much as the answer is (an agent's e-mail body, a shell
command): they come out as TOOL_CALL parts and are judged with the answer.

Text beside the content is answer text too: a chat message's ``refusal``, its audio's
``transcript`` and its annotations' titles and URLs. A field LiteLLM did not know (it moves those
into ``provider_specific_fields``) is an UNKNOWN_ANSWER part: the response stage's fail mode.

``events.EventParts`` reads the event streams of the OpenAI Responses API and the Anthropic
Messages API (and their whole-response forms).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..content import reasoning_text

_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def approx_tokens(text: str) -> int:
    """Tokens in ``text``, approximated by words and punctuation marks.

    Monitors count positions in these units so offsets and lags mean the same thing whatever the
    provider's chunking (one token per delta, or whole sentences)."""
    return len(_WORD.findall(text))


class PartKind(str, Enum):
    REASONING = "reasoning"
    ANSWER = "answer"
    TOOL_CALL = "tool_call"
    UNKNOWN = "unknown"  # reasoning we cannot read: judged by the stage's fail mode
    UNKNOWN_ANSWER = "unknown_answer"  # answer content we cannot read: the response stage's fail mode


@dataclass(frozen=True, slots=True)
class Part:
    """One typed piece of a model turn: its kind, its text (for UNKNOWN: what was not read) and
    the choice it belongs to (``n>1`` streams carry several)."""

    kind: PartKind
    text: str
    index: int = 0


_MISSING = object()
_CLASS_ATTR: dict[tuple[type, str], bool] = {}


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` or ``obj.key``, None when absent. Fields of plain and pydantic objects are read
    from their ``__dict__``: no AttributeError raised per miss on the per-chunk path."""
    if type(obj) is dict:
        return obj.get(key)
    d = getattr(obj, "__dict__", None)
    if d is None:
        return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)
    value = d.get(key, _MISSING)
    if value is not _MISSING:
        return value
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra and key in extra:
        return extra[key]
    if isinstance(obj, Mapping):
        return obj.get(key)
    # a property or class attribute? (asked once per class and key: a miss raises inside pydantic)
    has = _CLASS_ATTR.get((type(obj), key))
    if has is None:
        has = _CLASS_ATTR[type(obj), key] = getattr(type(obj), key, None) is not None
    return getattr(obj, key, None) if has else None


def parts_of(obj: Any) -> list[Part]:
    """The parts one chunk, delta, message or response carries, in the order a reader sees them
    (reasoning, answer, tool calls). Accepts an OpenAI / LiteLLM chunk or response (one index per
    choice), a bare delta or message (object or dict) and a LangChain message (v0 or v1)."""
    if obj is None:
        return []
    choices = _get(obj, "choices")
    if choices:
        out: list[Part] = []
        for pos, choice in enumerate(choices):
            inner = _get(choice, "delta") or _get(choice, "message")
            index = _get(choice, "index")
            if inner is not None:
                out += _message_parts(inner, index if isinstance(index, int) else pos)
        return out
    if isinstance(obj, str):
        return [Part(PartKind.ANSWER, obj)] if obj else []
    return _message_parts(obj, 0)


def _message_parts(m: Any, index: int) -> list[Part]:
    reasoning, answer = "", ""
    unknown: list[str] = []
    content = _get(m, "content")
    if isinstance(content, list):
        reasoning, answer = _from_blocks(content, unknown)
    elif isinstance(content, str):
        answer = content
    if not reasoning and not unknown:
        extra = _get(m, "additional_kwargs")
        for source in (m, extra if isinstance(extra, Mapping) else None):
            for key in _REASONING_KEYS if source is not None else ():
                value = _get(source, key)
                if value is None:
                    continue
                text = reasoning_text(value)
                if text is None:
                    unknown.append(f"{key} of type {type(value).__name__}")
                elif text:
                    reasoning = text
                    break
            if reasoning:
                break
    parts = [Part(PartKind.UNKNOWN, why, index) for why in unknown]
    if reasoning:
        parts.append(Part(PartKind.REASONING, reasoning, index))
    if answer:
        parts.append(Part(PartKind.ANSWER, answer, index))
    parts += _beside_content(m, index)
    tools = _tool_text(m)
    if tools:
        parts.append(Part(PartKind.TOOL_CALL, tools, index))
    return parts


#: what LiteLLM keeps in a message's provider_specific_fields that is read elsewhere or carries no
#: model text (its own copies of reasoning, our refusal's decision)
_KNOWN_PROVIDER_FIELDS = frozenset({"reasoning", "reasoning_content", "thinking_blocks", "guardrails_plugin"})


def _beside_content(m: Any, index: int) -> list[Part]:
    """Answer text a chat message or delta carries beside ``content`` (OpenAI / LiteLLM fields),
    and the fields nobody knows (UNKNOWN_ANSWER)."""
    out: list[Part] = []
    refusal = _get(m, "refusal")
    if isinstance(refusal, str) and refusal:
        out.append(Part(PartKind.ANSWER, refusal, index))
    audio = _get(m, "audio")
    if audio is not None:
        transcript = _get(audio, "transcript")
        if isinstance(transcript, str) and transcript:
            out.append(Part(PartKind.ANSWER, transcript, index))
    for a in _get(m, "annotations") or ():
        text = annotation_text(a)
        out.append(Part(PartKind.ANSWER, text, index) if text is not None else
                   Part(PartKind.UNKNOWN_ANSWER, f"annotation of type {_get(a, 'type')!r}", index))
    psf = _get(m, "provider_specific_fields")
    if isinstance(psf, Mapping):
        out += [Part(PartKind.UNKNOWN_ANSWER, f"answer field {k!r}", index)
                for k, v in psf.items() if v not in (None, "", [], {}) and k not in _KNOWN_PROVIDER_FIELDS]
    return out


def annotation_text(a: Any) -> str | None:
    """An annotation (chat ``url_citation`` nests its fields, Responses' are flat) as judged text;
    None for a type we do not know."""
    kind = _get(a, "type")
    if kind == "url_citation":
        inner = _get(a, "url_citation") or a
        return f"\n[source] {_str(_get(inner, 'title'))} <{_str(_get(inner, 'url'))}>"
    if kind in ("file_citation", "container_file_citation", "file_path"):
        return f"\n[source] {_str(_get(a, 'filename') or _get(a, 'file_id'))}"
    return None


def _from_blocks(blocks: list[Any], unknown: list[str]) -> tuple[str, str]:
    reasoning: list[str] = []
    content: list[str] = []
    for b in blocks:
        if isinstance(b, str):
            content.append(b)
            continue
        kind = _get(b, "type")
        if kind in ("reasoning", "thinking", "redacted_thinking"):
            text = reasoning_text(b)
            if text is None:
                unknown.append(f"{kind} block with unreadable fields")
            else:
                reasoning.append(text)
        elif kind in ("text", "output_text"):
            text = _get(b, "text")
            content.append(text if isinstance(text, str) else "")
    return "".join(reasoning), "".join(content)


def extract_deltas(chunk: Any) -> tuple[str, str]:
    """``(reasoning, answer)`` text of one chunk / message (the first choice of an OpenAI chunk).
    A reading view: reasoning of an unknown shape is left out here; ``parts_of`` reports it."""
    parts = parts_of(chunk)
    if not parts:
        return "", ""
    first = parts[0].index
    r = "".join(p.text for p in parts if p.kind is PartKind.REASONING and p.index == first)
    a = "".join(p.text for p in parts if p.kind is PartKind.ANSWER and p.index == first)
    return r, a


def tool_call_text(obj: Any) -> str:
    """Tool calls carried by a message, chunk or delta, as text a guard can read: a complete call
    reads ``\\n[tool call] name(arguments)``; a streamed call gives ``\\n[tool call] name(`` with the
    fragment that carries the name and bare argument fragments after it, so the pieces
    concatenate into the same text. Also reads a chunk's ``choices[0].delta`` / ``.message``."""
    if obj is None:
        return ""
    choices = _get(obj, "choices")
    if choices:
        obj = _get(choices[0], "delta") or _get(choices[0], "message")
    return _tool_text(obj) if obj is not None else ""


def _tool_text(obj: Any) -> str:
    # LangChain chunks carry raw argument fragments in tool_call_chunks (their parsed tool_calls
    # stay empty until the JSON closes).
    chunks = _get(obj, "tool_call_chunks")
    if chunks:
        return "".join(
            (f"\n[tool call] {_get(c, 'name')}(" if _get(c, "name") else "") + _str(_get(c, "args"))
            for c in chunks
        )
    calls = _get(obj, "tool_calls")
    if not calls:
        fc = _get(obj, "function_call")
        if not fc:
            return ""
        calls = [{"function": fc}]
    out: list[str] = []
    for call in calls:
        fn = _get(call, "function")
        if fn is None and _get(call, "name"):  # LangChain ToolCall: {"name", "args": {...}}
            args = json.dumps(_get(call, "args"), ensure_ascii=False, default=str)
            out.append(f"\n[tool call] {_get(call, 'name')}({args})")
        elif fn is not None:
            name = _str(_get(fn, "name"))
            args = _str(_get(fn, "arguments"))
            out.append(f"\n[tool call] {name}({args}" if name else args)
    return "".join(out)


def _str(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
