"""Reading reasoning and answer text out of streamed chunks, whatever the provider calls them.

Reasoning arrives under several names: LangChain content blocks of type "reasoning" (v1) or
"thinking" (Anthropic-style), ``additional_kwargs["reasoning_content"]`` (v0, DeepSeek / Qwen via
OpenAI-compatible servers), OpenAI-style ``delta.reasoning_content`` and vLLM's newer
``delta.reasoning``. A guard that reads only one of them lets the others through unguarded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def approx_tokens(text: str) -> int:
    """Tokens in ``text``, approximated by words and punctuation marks.

    The monitor counts positions in these units so offsets and lags mean the same thing whatever the
    provider's chunking (one token per delta, or whole sentences)."""
    return len(_WORD.findall(text))


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # e.g. reasoning summaries as a list of parts
        return "".join(_text_of(_get(v, "text") if not isinstance(v, str) else v) for v in value)
    return str(value)


def _from_blocks(blocks: list[Any]) -> tuple[str, str]:
    reasoning: list[str] = []
    content: list[str] = []
    for b in blocks:
        if isinstance(b, str):
            content.append(b)
            continue
        kind = _get(b, "type")
        if kind in ("reasoning", "thinking"):
            reasoning.append(_text_of(_get(b, "reasoning") or _get(b, "thinking") or _get(b, "text")))
        elif kind in ("text", "output_text"):
            content.append(_text_of(_get(b, "text")))
    return "".join(reasoning), "".join(content)


def extract_deltas(chunk: Any) -> tuple[str, str]:
    """``(reasoning, content)`` text carried by one streamed chunk.

    Accepts an OpenAI / LiteLLM chunk (``choices[0].delta``), a bare delta or message (object or
    dict), or a LangChain ``AIMessageChunk`` (v0 or v1 output version).
    """
    if chunk is None:
        return "", ""
    choices = _get(chunk, "choices")
    if choices:
        first = choices[0]
        inner = _get(first, "delta") or _get(first, "message")
        if inner is not None:
            return extract_deltas(inner)
        return "", ""

    reasoning = ""
    content_text = ""
    content = _get(chunk, "content")
    if isinstance(content, list):
        reasoning, content_text = _from_blocks(content)
    elif isinstance(content, str):
        content_text = content

    if not reasoning:
        for key in _REASONING_KEYS:
            reasoning = _text_of(_get(chunk, key))
            if reasoning:
                break
    if not reasoning:
        extra = _get(chunk, "additional_kwargs")
        if isinstance(extra, Mapping):
            for key in _REASONING_KEYS:
                reasoning = _text_of(extra.get(key))
                if reasoning:
                    break
    return reasoning, content_text


def tool_call_text(obj: Any) -> str:
    """Tool calls carried by a message or a streamed delta, as text a guard can read.

    A tool call's arguments are model output as much as its answer is (an agent's e-mail body, a
    shell command), so they are guarded with the answer. A complete call reads
    ``[tool call] name(arguments)``; a streamed call gives ``\n[tool call] name(`` with the fragment
    that carries the name and bare argument fragments after it, so the pieces concatenate into the
    same text. Also reads a chunk's ``choices[0].delta`` / ``.message``."""
    if obj is None:
        return ""
    choices = _get(obj, "choices")
    if choices:
        first = choices[0]
        obj = _get(first, "delta") or _get(first, "message")
    # LangChain message chunks carry raw argument fragments in tool_call_chunks (their parsed
    # tool_calls are empty until the JSON closes).
    chunks = _get(obj, "tool_call_chunks") if obj is not None else None
    if chunks:
        return "".join(
            (f"\n[tool call] {_get(c, 'name')}(" if _get(c, "name") else "") + _text_of(_get(c, "args"))
            for c in chunks
        )
    calls = _get(obj, "tool_calls") if obj is not None else None
    if not calls:
        fc = _get(obj, "function_call") if obj is not None else None
        calls = [{"function": fc}] if fc else []
    out: list[str] = []
    for call in calls:
        fn = _get(call, "function")
        if fn is None and _get(call, "name"):  # LangChain ToolCall: {"name", "args": {...}}
            args = _get(call, "args")
            out.append(f"\n[tool call] {_get(call, 'name')}({json.dumps(args, ensure_ascii=False, default=str)})")
            continue
        if fn is None:
            continue
        name = _text_of(_get(fn, "name"))
        args = _text_of(_get(fn, "arguments"))
        if name:
            out.append(f"\n[tool call] {name}(" + args)
        else:
            out.append(args)
    text = "".join(out)
    return text
