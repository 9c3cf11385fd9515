"""LangChain shapes shared by the callback handler, the Runnable wrapper and the agent middleware:
reading prompts and outputs, and writing refusals and redactions back in the same shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.prompt_values import PromptValue

from ..content import normalize_text
from ..errors import GuardInputError
from ..stream import Part, parts_of
from ..types import Decision

_REASONING_KINDS = ("reasoning", "thinking")
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_INPUT_KEYS = ("input", "question", "query", "prompt", "messages")
_ROLES = {"user": "human", "assistant": "ai"}
OUTPUT_KEYS = ("output", "answer", "text")

#: response_metadata key marking messages written by this library (refusals, redactions)
META_KEY = "guardrails_plugin"


def _role(m: Any) -> str | None:
    if isinstance(m, BaseMessage):
        return {"AIMessageChunk": "ai", "HumanMessageChunk": "human"}.get(m.type, m.type)
    role = m.get("role") or m.get("type") if isinstance(m, Mapping) else m[0] if isinstance(m, tuple) and len(m) == 2 else None
    return _ROLES.get(role, role) if isinstance(role, str) else None


def turn_prompt(messages: Sequence[Any]) -> list[Any] | None:
    """The user messages since the last AI message (a caller may append several at once, and the
    model reads every one, so the prompt check must too); None if there are none. Tuples
    ``("user", text)`` become their text."""
    turn: list[Any] = []
    for m in reversed(list(messages)):
        role = _role(m)
        if role == "ai":
            break
        if role == "human":
            turn.append(m[1] if isinstance(m, tuple) else m)
    return turn[::-1] or None


def query_of(messages: Sequence[Any]) -> str:
    """The newest user message as text: the query of reasoning and answer checks ("" if none or
    unreadable: the answer is still judged, without its query)."""
    for m in reversed(list(messages)):
        if _role(m) == "human":
            text = m[1] if isinstance(m, tuple) else m.content if isinstance(m, BaseMessage) else m.get("content", "")
            try:
                return normalize_text(text, what="query").value
            except GuardInputError:
                return ""
    return ""


def prompt_of(value: Any, input_key: str | None = None) -> Any:
    """The user input of a Runnable call: a string, a PromptValue, messages, or a dict (its
    ``input_key`` or the first of the usual keys). Message lists give the current user turn."""
    if isinstance(value, PromptValue):
        return turn_prompt(value.to_messages()) or value.to_string()
    if isinstance(value, Mapping):
        key = input_key or next((k for k in _INPUT_KEYS if k in value), None)
        if key is None:
            return "\n".join(str(v) for v in value.values() if isinstance(v, str))
        return prompt_of(value[key])
    if isinstance(value, Sequence) and not isinstance(value, str):
        return turn_prompt(value) or ""
    return value


def output_parts(value: Any, output_key: str | None = None) -> list[Part]:
    """The parts of a Runnable output or stream chunk (a str, a message, or a dict holding one)."""
    if isinstance(value, Mapping) and not ("content" in value or "choices" in value or "delta" in value):
        key = output_key or next((k for k in OUTPUT_KEYS if k in value), None)
        return output_parts(value[key]) if key is not None else []
    return parts_of(value)


def rebuild_message(msg: BaseMessage, *, reasoning: str | None, text: str) -> BaseMessage:
    """A copy of ``msg`` (same id and type) with its reasoning and text replaced, keeping the
    content's shape: string content stays a string, block content keeps its non-text blocks.
    ``reasoning=None`` drops the reasoning altogether."""
    # Reasoning may sit in both places (v1 content blocks built from reasoning_content): edit both.
    extra = {k: v for k, v in msg.additional_kwargs.items() if k not in _REASONING_KEYS}
    if reasoning:
        extra.update({k: reasoning for k in _REASONING_KEYS if msg.additional_kwargs.get(k)})
    content: Any = text
    if isinstance(msg.content, list):
        content, put_reasoning, put_text = [], False, False
        for block in msg.content:
            kind = block.get("type") if isinstance(block, Mapping) else "text"
            if kind in _REASONING_KINDS:
                if reasoning and not put_reasoning:
                    content.append({"type": "reasoning", "reasoning": reasoning})
                put_reasoning = True
            elif kind in ("text", "output_text"):
                if text and not put_text:
                    content.append({"type": "text", "text": text})
                put_text = True
            else:
                content.append(block)
        if reasoning and not put_reasoning:
            content.insert(0, {"type": "reasoning", "reasoning": reasoning})
        if text and not put_text:
            content.append({"type": "text", "text": text})
    return msg.model_copy(update={"content": content, "additional_kwargs": extra})


def decision_meta(decision: Decision) -> dict[str, Any]:
    return {"action": str(decision.action), "stage": str(decision.stage), "reason": decision.reason,
            "risk": decision.risk, "request_id": decision.request_id}


def marked(msg: BaseMessage, decision: Decision, **update: Any) -> Any:
    """``msg`` (same id) with ``update`` applied and the decision in its response_metadata."""
    meta = {**(msg.response_metadata or {}), META_KEY: decision_meta(decision)}
    return msg.model_copy(update={**update, "response_metadata": meta})


def refusal_message(decision: Decision, *, like: BaseMessage | None = None) -> AIMessage:
    """The refusal AIMessage; ``like`` gives the id to keep (so a state reducer replaces the
    blocked message instead of appending). It carries no tool calls."""
    kw = {"id": like.id} if like is not None and like.id is not None else {}
    return AIMessage(content=decision.text, response_metadata={META_KEY: decision_meta(decision)}, **kw)


def text_chunk(text: str, like: Any, output_key: str | None = None, decision: Decision | None = None) -> Any:
    """A stream chunk carrying ``text``, of the same kind as ``like`` (str, dict, message chunk;
    block content stays block content), marked with ``decision`` if given."""
    if isinstance(like, str):
        return text
    if isinstance(like, Mapping) and "content" not in like:
        key = output_key or next((k for k in OUTPUT_KEYS if k in like), "output")
        return {**like, key: text}
    kw: dict[str, Any] = {"id": like.id} if isinstance(like, BaseMessage) and like.id else {}
    if decision is not None:
        kw["response_metadata"] = {META_KEY: decision_meta(decision)}
    blocks = isinstance(like, BaseMessage) and isinstance(like.content, list)
    return AIMessageChunk(content=[{"type": "text", "text": text}] if blocks else text, **kw)


def is_guard_message(msg: Any) -> bool:
    """True for messages this library wrote (refusals, redactions): never re-checked."""
    return isinstance(msg, BaseMessage) and META_KEY in (msg.response_metadata or {})


class GuardHost(Protocol):
    """What the escalation flows (pause.py) and the v3 stream transformer need of the
    GuardMiddleware that owns them (a protocol: they never import the middleware back)."""

    guard: Any
    check_reasoning: bool
    check_response: bool
    last_stream: Any

    @property
    def name(self) -> str: ...

    def _stages(self) -> dict[str, bool]: ...

    def _remember_stream(self, turn: Any) -> None: ...

    def _streamed_verdicts(self, msg_id: str | None, query: str, parts: list[Part]) -> tuple[Any, Any]: ...

    def _after_prompt(self, messages: Sequence[BaseMessage], d: Decision) -> dict[str, Any] | None: ...

    @staticmethod
    def _end_with(decision: Decision, like: BaseMessage | None = None) -> dict[str, Any]: ...
