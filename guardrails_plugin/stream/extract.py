"""Typed parts out of a model turn, whatever the wire format calls them.

Reasoning arrives under several names: LangChain content blocks of type "reasoning" (v1) or
"thinking" (Anthropic-style), ``additional_kwargs["reasoning_content"]`` (v0, DeepSeek / Qwen via
OpenAI-compatible servers) or ``additional_kwargs["reasoning"]`` (OpenAI Responses summaries),
OpenAI-style ``delta.reasoning_content`` and vLLM's newer ``delta.reasoning``. A guard that reads
only one of them lets the others through unguarded, so every integration reads them here, and a
reasoning shape we do not know becomes an UNKNOWN part that the turn guard sends to the fail mode.

Tool-call arguments are model output as much as the answer is (an agent's e-mail body, a shell
command): they come out as TOOL_CALL parts and are judged with the answer.

``EventParts`` reads the event streams of the OpenAI Responses API and the Anthropic Messages API
(and their whole-response forms): reasoning text and summaries, thinking, output text, tool-call
arguments; an event, item or block of a type it does not know is an UNKNOWN part.
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
    tools = _tool_text(m)
    if tools:
        parts.append(Part(PartKind.TOOL_CALL, tools, index))
    return parts


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


# -- event streams: OpenAI Responses and Anthropic Messages -------------------------------------
_R = PartKind.REASONING
_A = PartKind.ANSWER
_T = PartKind.TOOL_CALL
#: Responses delta events: type -> (kind, key name of the item slot, index field)
_RESPONSES_DELTAS: dict[str, tuple[PartKind, str, str | None]] = {
    "response.reasoning_text.delta": (_R, "reasoning", "content_index"),
    "response.reasoning_summary_text.delta": (_R, "summary", "summary_index"),
    "response.output_text.delta": (_A, "text", "content_index"),
    "response.refusal.delta": (_A, "text", "content_index"),
    "response.audio.transcript.delta": (_A, "transcript", None),
    "response.function_call_arguments.delta": (_T, "args", None),
    "response.custom_tool_call_input.delta": (_T, "args", None),
    "response.mcp_call_arguments.delta": (_T, "args", None),
    "response.code_interpreter_call_code.delta": (_T, "args", None),
}
#: Responses events repeating a slot's whole text: type -> (kind, slot, index field, text field)
_RESPONSES_DONES: dict[str, tuple[PartKind, str, str | None, str]] = {
    "response.reasoning_text.done": (_R, "reasoning", "content_index", "text"),
    "response.reasoning_summary_text.done": (_R, "summary", "summary_index", "text"),
    "response.output_text.done": (_A, "text", "content_index", "text"),
    "response.refusal.done": (_A, "text", "content_index", "refusal"),
    "response.audio.transcript.done": (_A, "transcript", None, "transcript"),
    "response.function_call_arguments.done": (_T, "args", None, "arguments"),
    "response.custom_tool_call_input.done": (_T, "args", None, "input"),
    "response.mcp_call_arguments.done": (_T, "args", None, "arguments"),
    "response.code_interpreter_call_code.done": (_T, "args", None, "code"),
}
#: events that carry no model text (lifecycle, progress of hosted tools, annotations, audio bytes)
_NO_TEXT_EVENTS = frozenset({
    "response.queued", "response.output_text.annotation.added", "response.audio.delta", "response.audio.done",
    "response.image_generation_call.partial_image", "image_generation.partial_image", "error",
    "content_block_stop", "message_delta", "message_stop", "ping",
})
_NO_TEXT_SUFFIXES = (".in_progress", ".searching", ".completed", ".generating", ".interpreting", ".failed",
                     ".incomplete")
#: Responses output items that carry no model text (hosted tools' progress, their results)
_NO_TEXT_ITEMS = frozenset({"web_search_call", "file_search_call", "image_generation_call", "mcp_list_tools",
                            "local_shell_call_output", "tool_search_output"})
#: Anthropic blocks that carry no model text (encrypted reasoning, results of server-side tools)
_NO_TEXT_BLOCKS = frozenset({"redacted_thinking", "web_search_tool_result", "web_fetch_tool_result",
                             "code_execution_tool_result", "bash_code_execution_tool_result",
                             "text_editor_code_execution_tool_result", "tool_search_tool_result"})
_ANTHROPIC_DELTAS: dict[str, tuple[PartKind | None, str]] = {
    "text_delta": (_A, "text"), "thinking_delta": (_R, "thinking"), "input_json_delta": (_T, "partial_json"),
    "signature_delta": (None, ""), "citations_delta": (None, ""),
}


class EventParts:
    """Parts of the events of one OpenAI Responses or Anthropic Messages stream, and of their
    whole-response forms (``output`` items, ``content`` blocks).

    Stateful, one per stream: deltas are fed as they come; the events that repeat a slot's whole
    text (``*.done``, ``output_item.done``, ``response.completed``, a block start with text) feed
    only what the deltas did not already carry (an upstream that sends no deltas is judged from
    these). An event, item or block of a type it does not know is an UNKNOWN part: its text might
    be model output nobody judged."""

    def __init__(self) -> None:
        self._fed: dict[tuple[Any, ...], str] = {}
        self._named: set[Any] = set()

    def __call__(self, event: Any) -> list[Part]:
        kind = _get(event, "type")
        if not isinstance(kind, str):
            return [Part(PartKind.UNKNOWN, f"stream event without a type: {type(event).__name__}")]
        if kind in _NO_TEXT_EVENTS:
            return []
        if kind.startswith("content_block_") or kind == "message_start":
            return self._anthropic(kind, event)
        spec = _RESPONSES_DELTAS.get(kind)
        if spec is not None:
            part_kind, slot, index = spec
            key = (_get(event, "item_id"), slot, _get(event, index) if index else 0)
            return self._feed(key, part_kind, _str(_get(event, "delta")), delta=True)
        done = _RESPONSES_DONES.get(kind)
        if done is not None:
            part_kind, slot, index, field = done
            key = (_get(event, "item_id"), slot, _get(event, index) if index else 0)
            return self._feed(key, part_kind, _str(_get(event, field)))
        if kind in ("response.output_item.added", "response.output_item.done"):
            return self.item(_get(event, "item"))
        if kind in ("response.content_part.added", "response.content_part.done"):
            return self._content_part(_get(event, "item_id"), _get(event, "content_index"), _get(event, "part"))
        if kind in ("response.reasoning_summary_part.added", "response.reasoning_summary_part.done"):
            key = (_get(event, "item_id"), "summary", _get(event, "summary_index"))
            return self._feed(key, _R, _str(_get(_get(event, "part"), "text")))
        if kind in ("response.created", "response.in_progress", "response.completed", "response.incomplete",
                    "response.failed"):
            return self.output(_get(_get(event, "response"), "output"))
        if kind.endswith(_NO_TEXT_SUFFIXES):  # a hosted tool's progress (web search, MCP, ...)
            return []
        return [Part(PartKind.UNKNOWN, f"stream event {kind!r}")]

    # -- whole items and blocks --------------------------------------------------------------
    def output(self, items: Any) -> list[Part]:
        """The parts of a Responses ``output`` list."""
        return [p for item in items or () for p in self.item(item)]

    def item(self, item: Any) -> list[Part]:
        """The parts of one Responses output item."""
        if item is None:
            return []
        kind, item_id = _get(item, "type"), _get(item, "id")
        out: list[Part] = []
        if kind == "message":
            for i, part in enumerate(_get(item, "content") or ()):
                out += self._content_part(item_id, i, part)
        elif kind == "reasoning":
            for slot in ("summary", "content"):
                for i, part in enumerate(_get(item, slot) or ()):
                    text = reasoning_text(part)
                    if text is None:
                        out.append(Part(PartKind.UNKNOWN, f"reasoning {slot} part of type {_get(part, 'type')!r}"))
                    else:
                        out += self._feed((item_id, "summary" if slot == "summary" else "reasoning", i), _R, text)
        elif kind in ("function_call", "custom_tool_call", "mcp_call", "code_interpreter_call", "local_shell_call",
                      "computer_call", "mcp_approval_request", "shell_call", "apply_patch_call"):
            name = _get(item, "name") or kind
            if item_id not in self._named:
                self._named.add(item_id)
                out.append(Part(_T, f"\n[tool call] {name}("))
            field = next((f for f in ("arguments", "input", "code", "action", "operation") if _get(item, f)), None)
            if field is not None:
                out += self._feed((item_id, "args", 0), _T, _str(_get(item, field)))
        elif kind not in _NO_TEXT_ITEMS:
            out.append(Part(PartKind.UNKNOWN, f"output item of type {kind!r}"))
        return out

    def _content_part(self, item_id: Any, index: Any, part: Any) -> list[Part]:
        kind = _get(part, "type")
        if kind == "output_text":
            return self._feed((item_id, "text", index), _A, _str(_get(part, "text")))
        if kind == "refusal":
            return self._feed((item_id, "text", index), _A, _str(_get(part, "refusal")))
        if kind == "reasoning_text":
            return self._feed((item_id, "reasoning", index), _R, _str(_get(part, "text")))
        if kind in ("output_audio", "audio"):
            return self._feed((item_id, "transcript", 0), _A, _str(_get(part, "transcript")))
        return [Part(PartKind.UNKNOWN, f"content part of type {kind!r}")]

    def blocks(self, blocks: Any) -> list[Part]:
        """The parts of an Anthropic message's ``content`` blocks."""
        return [p for i, b in enumerate(blocks or ()) for p in self.block(i, b)]

    def block(self, index: Any, block: Any) -> list[Part]:
        """The parts of one Anthropic content block (its start, or the whole block)."""
        kind = _get(block, "type")
        if kind == "text":
            return self._feed(("block", index), _A, _str(_get(block, "text")))
        if kind == "thinking":
            return self._feed(("block", index), _R, _str(_get(block, "thinking")))
        if kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            out = []
            if ("block", index) not in self._named:
                self._named.add(("block", index))
                out.append(Part(_T, f"\n[tool call] {_get(block, 'name')}("))
            args = _get(block, "input")
            if args:  # a start event carries {} and the arguments follow as input_json_delta
                out += self._feed(("block", index), _T, _str(args))
            return out
        if kind in _NO_TEXT_BLOCKS:
            return []
        return [Part(PartKind.UNKNOWN, f"content block of type {kind!r}")]

    def _anthropic(self, kind: str, event: Any) -> list[Part]:
        if kind == "message_start":
            return self.blocks(_get(_get(event, "message"), "content"))
        index = _get(event, "index")
        if kind == "content_block_start":
            return self.block(index, _get(event, "content_block"))
        if kind == "content_block_delta":
            delta = _get(event, "delta")
            spec = _ANTHROPIC_DELTAS.get(_get(delta, "type"))
            if spec is None:
                return [Part(PartKind.UNKNOWN, f"content block delta of type {_get(delta, 'type')!r}")]
            part_kind, field = spec
            if part_kind is None:  # signatures, citations: no model text
                return []
            return self._feed(("block", index), part_kind, _str(_get(delta, field)), delta=True)
        return [Part(PartKind.UNKNOWN, f"stream event {kind!r}")]

    def _feed(self, key: tuple[Any, ...], kind: PartKind, text: str, *, delta: bool = False) -> list[Part]:
        """A delta is new text; a whole text feeds what the slot has not carried yet (all of it
        when it does not continue what was fed)."""
        if not text:
            return []
        fed = self._fed.get(key, "")
        if delta:
            self._fed[key] = fed + text
            return [Part(kind, text)]
        if text.startswith(fed):
            rest = text[len(fed):]
        else:
            rest = text  # not what the deltas said: judge the whole text again
        self._fed[key] = text
        return [Part(kind, rest)] if rest else []
