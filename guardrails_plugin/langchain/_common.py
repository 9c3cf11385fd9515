"""Helpers shared by the LangChain callback handler, runnable wrapper and agent middleware."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.prompt_values import PromptValue

from ..content import normalize_text
from ..errors import GuardInputError
from ..streaming import extract_deltas
from ..types import Decision

_REASONING_KINDS = ("reasoning", "thinking")
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_INPUT_KEYS = ("input", "question", "query", "prompt", "messages")

#: response_metadata key marking messages written by this library (refusals, redactions)
META_KEY = "guardrails_plugin"


def _is_human(m: Any) -> bool:
    if isinstance(m, HumanMessage):
        return True
    if isinstance(m, BaseMessage):
        return m.type == "human"
    if isinstance(m, Mapping):
        return m.get("role") == "user" or m.get("type") == "human"
    if isinstance(m, tuple) and len(m) == 2:
        return m[0] in ("user", "human")
    return False


def _content_of(m: Any) -> Any:
    if isinstance(m, BaseMessage):
        return m.content
    if isinstance(m, Mapping):
        return m.get("content", "")
    if isinstance(m, tuple) and len(m) == 2:
        return m[1]
    return m


def _is_ai(m: Any) -> bool:
    if isinstance(m, BaseMessage):
        return m.type in ("ai", "AIMessageChunk")
    if isinstance(m, Mapping):
        return m.get("role") == "assistant" or m.get("type") == "ai"
    if isinstance(m, tuple) and len(m) == 2:
        return m[0] in ("assistant", "ai")
    return False


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    try:
        return normalize_text(content, what="message").value
    except GuardInputError:
        return str(content)  # still judged: odd content must not drop out of the check


def turn_prompt(messages: Sequence[Any]) -> Any | None:
    """What the user said since the last AI message: the newest user message's content, or the
    texts of all of them when a caller appended several at once (the model reads every one, so
    the prompt check must too). None if there is no user message after the last AI message."""
    contents: list[Any] = []
    for m in reversed(list(messages)):
        if _is_ai(m):
            break
        if _is_human(m):
            contents.append(_content_of(m))
    if not contents:
        return None
    if len(contents) == 1:
        return contents[0]
    return "\n\n".join(_plain(c) for c in reversed(contents))


def newest_human_content(messages: Sequence[Any]) -> Any | None:
    """Content (str or content parts) of the newest user message, or None if there is none."""
    for m in reversed(list(messages)):
        if _is_human(m):
            return _content_of(m)
    return None


def prompt_of(value: Any, input_key: str | None = None) -> Any:
    """The user text in a Runnable input: a string, a PromptValue, a message list, or a dict.

    Message lists give what the user said since the last AI message (earlier turns were checked
    when they were new);
    dicts give ``input_key`` or the first of the usual keys."""
    if isinstance(value, str):
        return value
    if isinstance(value, PromptValue):
        msgs = value.to_messages()
        found = turn_prompt(msgs)
        return found if found is not None else value.to_string()
    if isinstance(value, BaseMessage):
        return value.content
    if isinstance(value, Mapping):
        if input_key is not None:
            return prompt_of(value[input_key])
        for key in _INPUT_KEYS:
            if key in value:
                return prompt_of(value[key])
        return "\n".join(str(v) for v in value.values() if isinstance(v, str))
    if isinstance(value, Sequence):
        found = turn_prompt(value)
        return found if found is not None else ""
    return str(value)


def split_output(value: Any, output_key: str | None = None) -> tuple[str, str]:
    """``(reasoning, answer)`` text of a Runnable output or stream chunk."""
    if isinstance(value, str):
        return "", value
    if isinstance(value, Mapping) and not _looks_like_message_dict(value):
        key = output_key or next((k for k in ("output", "answer", "text") if k in value), None)
        return split_output(value[key]) if key is not None else ("", "")
    return extract_deltas(value)


def _looks_like_message_dict(value: Mapping[str, Any]) -> bool:
    return "content" in value or "choices" in value or "delta" in value


def has_reasoning(msg: BaseMessage) -> bool:
    return bool(extract_deltas(msg)[0])


def rebuild_message(msg: BaseMessage, *, reasoning: str | None, text: str) -> BaseMessage:
    """A copy of ``msg`` (same id and type) with its reasoning and text replaced, keeping the
    content's shape: string content stays a string, block content keeps its non-text blocks.
    ``reasoning=None`` drops the reasoning altogether."""
    # Reasoning may sit in both places (v1 content blocks built from reasoning_content): edit both.
    extra = {k: v for k, v in msg.additional_kwargs.items() if k not in _REASONING_KEYS}
    if reasoning:
        extra.update({k: reasoning for k in _REASONING_KEYS if msg.additional_kwargs.get(k)})
    content: Any
    if isinstance(msg.content, list):
        content = []
        put_reasoning = put_text = False
        for block in msg.content:
            kind = block.get("type") if isinstance(block, Mapping) else "text"
            if kind in _REASONING_KINDS:
                if reasoning and not put_reasoning:
                    content.append({"type": "reasoning", "reasoning": reasoning})
                put_reasoning = True
            elif kind in ("text", "output_text"):
                if not put_text and text:
                    content.append({"type": "text", "text": text})
                put_text = True
            else:
                content.append(block)
        if reasoning and not put_reasoning:
            content.insert(0, {"type": "reasoning", "reasoning": reasoning})
        if text and not put_text:
            content.append({"type": "text", "text": text})
    else:
        content = text
    return msg.model_copy(update={"content": content, "additional_kwargs": extra})


def decision_meta(decision: Decision) -> dict[str, Any]:
    return {
        "action": str(decision.action),
        "stage": str(decision.stage),
        "reason": decision.reason,
        "risk": decision.risk,
        "request_id": decision.request_id,
    }


def refusal_message(decision: Decision, *, like: BaseMessage | None = None, text: str | None = None) -> AIMessage:
    """The refusal AIMessage for a blocking decision; ``like`` gives the id to keep (so a state
    reducer replaces the blocked message instead of appending)."""
    meta = {META_KEY: decision_meta(decision)}
    kwargs: dict[str, Any] = {"content": text if text is not None else decision.text, "response_metadata": meta}
    if like is not None and like.id is not None:
        kwargs["id"] = like.id
    return AIMessage(**kwargs)


def refusal_chunk(decision: Decision, *, like: Any = None, text: str | None = None) -> Any:
    """A final stream chunk carrying the refusal, of the same kind as the stream's chunks."""
    content = text if text is not None else decision.text
    if isinstance(like, str):
        return content
    meta = {META_KEY: decision_meta(decision)}
    kwargs: dict[str, Any] = {"response_metadata": meta}
    if isinstance(like, BaseMessage) and like.id is not None:
        kwargs["id"] = like.id
    if isinstance(like, BaseMessage) and isinstance(like.content, list):
        return AIMessageChunk(content=[{"type": "text", "text": content}], **kwargs)
    return AIMessageChunk(content=content, **kwargs)


def is_guard_message(msg: Any) -> bool:
    """True for messages this library wrote (refusals, redactions): never re-checked."""
    return isinstance(msg, BaseMessage) and META_KEY in (msg.response_metadata or {})
