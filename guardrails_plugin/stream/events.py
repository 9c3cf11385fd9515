"""Typed parts of the OpenAI Responses and Anthropic Messages event streams, and of their
whole-response forms (a Responses ``output`` list and top-level fields, Messages ``content`` blocks).

What is read: reasoning text and summaries, thinking, output text, refusals, audio transcripts,
annotation titles and URLs (``response.output_text.annotation.added`` included), tool-call
arguments, hosted tools' model-written text (a web search's query, an image generation's revised
prompt, a file search's queries) and Anthropic citations.

Unknown is unsafe, and nothing is guessed from a name: the events, items, content parts, blocks
and top-level response fields this module knows are listed below; anything else is an
UNKNOWN_ANSWER part, which the turn guard sends to the response stage's fail mode (a reasoning
part of a shape nobody knows is UNKNOWN: the reasoning stage's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..content import reasoning_text
from .extract import Part, PartKind, _get, _str, annotation_text

_R = PartKind.REASONING
_A = PartKind.ANSWER
_T = PartKind.TOOL_CALL
_U = PartKind.UNKNOWN_ANSWER
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
#: events known to carry no model text: lifecycle, hosted tools' progress (ids and indexes only),
#: audio and image bytes, Anthropic's block / message ends and keep-alives
_NO_TEXT_EVENTS = frozenset({
    "response.queued", "error", "response.audio.delta", "response.audio.done",
    "response.web_search_call.in_progress", "response.web_search_call.searching", "response.web_search_call.completed",
    "response.file_search_call.in_progress", "response.file_search_call.searching",
    "response.file_search_call.completed",
    "response.image_generation_call.in_progress", "response.image_generation_call.generating",
    "response.image_generation_call.partial_image", "response.image_generation_call.completed",
    "response.code_interpreter_call.in_progress", "response.code_interpreter_call.interpreting",
    "response.code_interpreter_call.completed",
    "response.mcp_call.in_progress", "response.mcp_call.completed", "response.mcp_call.failed",
    "response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed", "response.mcp_list_tools.failed",
    "content_block_stop", "message_delta", "message_stop", "ping",
})
_RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.completed", "response.incomplete",
                              "response.failed"})
#: Responses tool-call items: their arguments are judged with the answer
_TOOL_ITEMS = frozenset({"function_call", "custom_tool_call", "mcp_call", "code_interpreter_call", "local_shell_call",
                         "computer_call", "mcp_approval_request", "shell_call", "apply_patch_call"})
#: Responses items that carry no model-written text: tool listings, tools' own results, opaque state
_NO_TEXT_ITEMS = frozenset({"mcp_list_tools", "local_shell_call_output", "tool_search_output", "compaction"})
#: top-level fields of a Responses response: the output (read), settings and ids echoed back, usage
RESPONSE_FIELDS = frozenset({
    "id", "object", "created_at", "completed_at", "status", "error", "incomplete_details", "instructions",
    "max_output_tokens", "max_tool_calls", "metadata", "model", "output", "parallel_tool_calls",
    "previous_response_id", "reasoning", "store", "temperature", "text", "tool_choice", "tools", "top_p",
    "top_logprobs", "truncation", "usage", "user", "background", "conversation", "prompt", "prompt_cache_key",
    "prompt_cache_retention", "safety_identifier", "service_tier", "guardrails_plugin",
})
#: Anthropic blocks that carry no model text (encrypted reasoning, results of server-side tools)
_NO_TEXT_BLOCKS = frozenset({"redacted_thinking", "web_search_tool_result", "web_fetch_tool_result",
                             "code_execution_tool_result", "bash_code_execution_tool_result",
                             "text_editor_code_execution_tool_result", "tool_search_tool_result"})
_ANTHROPIC_DELTAS: dict[str, tuple[PartKind | None, str]] = {
    "text_delta": (_A, "text"), "thinking_delta": (_R, "thinking"), "input_json_delta": (_T, "partial_json"),
    "signature_delta": (None, ""), "citations_delta": (_A, "citation"),
}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _fields(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    extra = getattr(obj, "__pydantic_extra__", None) or {}
    return {**getattr(obj, "__dict__", {}), **extra}


def _citation_text(c: Any) -> str:
    """An Anthropic citation as judged text: the title and the quoted text the client sees."""
    title = _get(c, "title") or _get(c, "document_title") or _get(c, "url") or ""
    return f"\n[source] {_str(title)}: {_str(_get(c, 'cited_text'))}"


class EventParts:
    """Parts of the events of one OpenAI Responses or Anthropic Messages stream, and of their
    whole-response forms (``output`` items, ``content`` blocks, ``response`` fields).

    Stateful, one per stream: deltas are fed as they come; the events that repeat a slot's whole
    text (``*.done``, ``output_item.done``, ``response.completed``, a block start with text) feed
    only what the deltas did not already carry (an upstream that sends no deltas is judged from
    these). See the module docstring for what is read and what is unknown."""

    def __init__(self) -> None:
        self._fed: dict[tuple[Any, ...], str] = {}
        self._named: set[Any] = set()

    def __call__(self, event: Any) -> list[Part]:
        kind = _get(event, "type")
        if not isinstance(kind, str):
            return [Part(_U, f"stream event without a type: {type(event).__name__}")]
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
        if kind == "response.output_text.annotation.added":
            key = (_get(event, "item_id"), "annotation", _get(event, "content_index"), _get(event, "annotation_index"))
            return self._annotation(key, _get(event, "annotation"))
        if kind in _RESPONSE_EVENTS:
            return self.response(_get(event, "response"))
        return [Part(_U, f"stream event {kind!r}")]

    # -- whole items and blocks --------------------------------------------------------------
    def response(self, response: Any) -> list[Part]:
        """The parts of a whole Responses response: its output items and any top-level field
        this module does not know."""
        if response is None:
            return []
        out = self.output(_get(response, "output"))
        out += [Part(_U, f"response field {k!r}") for k, v in _fields(response).items()
                if k not in RESPONSE_FIELDS and not k.startswith("_") and not _empty(v)]
        return out

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
        elif kind in _TOOL_ITEMS:
            field = next((f for f in ("arguments", "input", "code", "action", "operation") if _get(item, f)), None)
            out += self._tool(item_id, _get(item, "name") or kind, _get(item, field) if field else None)
        elif kind == "web_search_call":
            out += self._tool(item_id, kind, _get(item, "action"))  # the query the model wrote
        elif kind == "file_search_call":
            out += self._tool(item_id, kind, _get(item, "queries"))
        elif kind == "image_generation_call":
            out += self._tool(item_id, kind, _get(item, "revised_prompt"))  # the result is image bytes
        elif kind not in _NO_TEXT_ITEMS:
            out.append(Part(_U, f"output item of type {kind!r}"))
        return out

    def _tool(self, item_id: Any, name: Any, args: Any) -> list[Part]:
        out: list[Part] = []
        if item_id not in self._named:
            self._named.add(item_id)
            out.append(Part(_T, f"\n[tool call] {name}("))
        if not _empty(args):
            out += self._feed((item_id, "args", 0), _T, _str(args))
        return out

    def _content_part(self, item_id: Any, index: Any, part: Any) -> list[Part]:
        kind = _get(part, "type")
        if kind == "output_text":
            out = self._feed((item_id, "text", index), _A, _str(_get(part, "text")))
            for n, a in enumerate(_get(part, "annotations") or ()):
                out += self._annotation((item_id, "annotation", index, n), a)
            return out
        if kind == "refusal":
            return self._feed((item_id, "text", index), _A, _str(_get(part, "refusal")))
        if kind == "reasoning_text":
            return self._feed((item_id, "reasoning", index), _R, _str(_get(part, "text")))
        if kind in ("output_audio", "audio"):
            return self._feed((item_id, "transcript", 0), _A, _str(_get(part, "transcript")))
        return [Part(_U, f"content part of type {kind!r}")]

    def _annotation(self, key: tuple[Any, ...], annotation: Any) -> list[Part]:
        text = annotation_text(annotation)
        if text is None:
            return [Part(_U, f"annotation of type {_get(annotation, 'type')!r}")]
        return self._feed(key, _A, text)

    def blocks(self, blocks: Any) -> list[Part]:
        """The parts of an Anthropic message's ``content`` blocks."""
        return [p for i, b in enumerate(blocks or ()) for p in self.block(i, b)]

    def block(self, index: Any, block: Any) -> list[Part]:
        """The parts of one Anthropic content block (its start, or the whole block)."""
        kind = _get(block, "type")
        if kind == "text":
            out = self._feed(("block", index), _A, _str(_get(block, "text")))
            for n, c in enumerate(_get(block, "citations") or ()):
                out += self._feed(("citation", index, n), _A, _citation_text(c))
            return out
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
        return [Part(_U, f"content block of type {kind!r}")]

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
                return [Part(_U, f"content block delta of type {_get(delta, 'type')!r}")]
            part_kind, field = spec
            if part_kind is None:  # signatures: no model text
                return []
            if field == "citation":  # a citation the text block gains: its own slot
                return [Part(part_kind, _citation_text(_get(delta, "citation")))]
            return self._feed(("block", index), part_kind, _str(_get(delta, field)), delta=True)
        return [Part(_U, f"stream event {kind!r}")]

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
