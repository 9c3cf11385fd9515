"""Judging a whole (non-streamed) LiteLLM answer, in each endpoint's format, and shaping a refusal.

* chat ``ModelResponse``: each choice's message (reasoning, answer, refusal, audio transcript,
  annotations, tool calls; unknown fields to the fail mode) on its own; a refused choice gets the
  refusal as its only text, ``finish_reason="content_filter"``, and loses its tool calls, audio,
  annotations, provider fields and logprobs (they spell the refused answer).
* completions ``TextCompletionResponse``: each choice's text; a refused choice loses its logprobs.
* responses ``ResponsesAPIResponse``: the output items (reasoning, messages with annotations, tool
  calls, hosted tools' queries and prompts) and unknown top-level fields; a refusal replaces the
  output with one message, drops the unknown fields and marks the response ``incomplete`` with
  ``incomplete_details.reason = "content_filter"``.
* messages (Anthropic, a dict): the content blocks (thinking, text, tool_use); a refusal replaces
  the content with one text block and sets ``stop_reason: "refusal"``.

A REDACT is applied where it maps back onto exactly one text (else the turn is refused: a
redaction of joined texts cannot be put back, and tool-call arguments cannot be edited); the
logprobs of a redacted text are dropped (they spell what was redacted).
Anything else is unreadable: the response stage's fail mode decides.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..stream import Part, PartKind, Verdicts, ajudge, parts_of
from ..stream.events import RESPONSE_FIELDS, EventParts
from ..types import Action, Decision, Stage

Judge = Callable[[list[Part]], Awaitable[Verdicts]]
#: response types that carry no model text
NO_TEXT_RESPONSES = frozenset({"EmbeddingResponse", "RerankResponse", "ModerationCreateResponse"})


@dataclass
class Outcome:
    """What judging a whole answer came to: the stopping decision (refused), if any."""

    stop: Decision | None = None


def kind_of(response: Any) -> str | None:
    """chat, completions, responses, messages; ``none`` for a response without model text; None
    for one we cannot read."""
    name = type(response).__name__
    if name == "ModelResponse":
        return "chat"
    if name == "TextCompletionResponse":
        return "completions"
    if name == "ResponsesAPIResponse":
        return "responses"
    if isinstance(response, dict) and response.get("type") == "message" and "content" in response:
        return "messages"
    if name in NO_TEXT_RESPONSES:
        return "none"
    return None


async def judge(response: Any, kind: str, judge_parts: Judge, refusal: Callable[[Decision], str],
                payload: Callable[[Decision], Awaitable[dict[str, Any]]]) -> Outcome:
    """Judge ``response`` in place: REDACTs applied, a refusal shaped (see the module docstring)."""
    out = Outcome()
    if kind == "chat":
        for choice in getattr(response, "choices", None) or []:
            message = getattr(choice, "message", None)
            if message is None:
                continue
            parts = parts_of(message)
            v = await judge_parts(parts)
            stop = v.stop
            if stop is None and v.answer is not None and not _content_only(message, parts):
                stop = _not_applicable(v.answer)
            if stop is not None:
                out.stop = out.stop or stop
                _refuse_message(message, refusal(stop))
                choice.finish_reason = "content_filter"
                choice.logprobs = None
                continue
            if v.reasoning is not None:
                field = "reasoning_content" if getattr(message, "reasoning_content", None) else "reasoning"
                setattr(message, field, v.reasoning.text)
            if v.answer is not None:
                message.content = v.answer.text
                choice.logprobs = None
    elif kind == "completions":
        for pos, choice in enumerate(getattr(response, "choices", None) or []):
            text = getattr(choice, "text", None)
            v = await judge_parts([Part(PartKind.ANSWER, text, pos)] if isinstance(text, str) and text else [])
            if v.stop is not None:
                out.stop = out.stop or v.stop
                choice.text, choice.finish_reason, choice.logprobs = refusal(v.stop), "content_filter", None
            elif v.answer is not None:
                choice.text, choice.logprobs = v.answer.text, None
    elif kind == "responses":
        items = list(getattr(response, "output", None) or [])
        v = await judge_parts(EventParts().response(response))
        stop = v.stop or _redact(items, v, _responses_slots)
        if stop is not None:
            out.stop = stop
            text = refusal(stop)
            _drop_unknown_fields(response)
            response.output = [{"type": "message", "id": "msg_refusal", "role": "assistant", "status": "completed",
                                "content": [{"type": "output_text", "text": text, "annotations": []}]}]
            response.status = "incomplete"
            response.incomplete_details = {"reason": "content_filter"}
            response.guardrails_plugin = await payload(stop)
    elif kind == "messages":
        blocks = list(response.get("content") or [])
        v = await judge_parts(EventParts().blocks(blocks))
        stop = v.stop or _redact(blocks, v, _messages_slots)
        if stop is not None:
            out.stop = stop
            response["content"] = [{"type": "text", "text": refusal(stop)}]
            response["stop_reason"] = "refusal"
            response["guardrails_plugin"] = await payload(stop)
    return out


#: the fields a refused chat message keeps (everything else may spell the refused answer)
_REFUSED_KEEPS = frozenset({"content", "role"})


def _refuse_message(message: Any, text: str) -> None:
    """``message`` with ``text`` as its only content: no reasoning, tool calls (a refused turn
    must not run its tools), audio, annotations, refusal field or provider fields."""
    message.content = text
    names = set(getattr(type(message), "model_fields", {})) | set(getattr(message, "__pydantic_extra__", None) or {})
    for attr in names - _REFUSED_KEEPS:
        if getattr(message, attr, None) is not None:
            setattr(message, attr, None)


def _content_only(message: Any, parts: list[Part]) -> bool:
    """True when the message's answer is its string content alone (a REDACT maps back onto it)."""
    answers = [p for p in parts if p.kind is PartKind.ANSWER]
    content = getattr(message, "content", None)
    return isinstance(content, str) and len(answers) == 1 and answers[0].text == content


def _not_applicable(d: Decision) -> Decision:
    return d.model_copy(update={"action": Action.BLOCK, "reason": f"{d.reason} (redaction not applicable)"})


def _drop_unknown_fields(response: Any) -> None:
    """Remove a refused Responses response's top-level fields nobody judged."""
    extra = getattr(response, "__pydantic_extra__", None)
    if isinstance(extra, dict):
        for k in [k for k in extra if k not in RESPONSE_FIELDS]:
            del extra[k]


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)


def _responses_slots(items: list[Any]) -> dict[Stage, list[tuple[Any, str]]]:
    slots: dict[Stage, list[tuple[Any, str]]] = {Stage.REASONING: [], Stage.RESPONSE: []}
    for item in items:
        kind = _get(item, "type")
        if kind == "message":  # text with annotations is judged with them: not one text to redact
            slots[Stage.RESPONSE] += [(p, "" if _get(p, "annotations") else "text") for p in _get(item, "content") or ()
                                      if _get(p, "type") == "output_text"]
        elif kind == "reasoning":
            slots[Stage.REASONING] += [(p, "text") for key in ("summary", "content") for p in _get(item, key) or ()]
        elif kind is not None:
            slots[Stage.RESPONSE].append((item, ""))  # a tool call: its arguments cannot be redacted
    return slots


def _messages_slots(blocks: list[Any]) -> dict[Stage, list[tuple[Any, str]]]:
    slots: dict[Stage, list[tuple[Any, str]]] = {Stage.REASONING: [], Stage.RESPONSE: []}
    for b in blocks:
        kind = _get(b, "type")
        if kind == "text":
            slots[Stage.RESPONSE].append((b, "" if _get(b, "citations") else "text"))
        elif kind == "thinking":
            slots[Stage.REASONING].append((b, "thinking"))
        elif kind not in ("redacted_thinking",):
            slots[Stage.RESPONSE].append((b, ""))
    return slots


def _redact(container: list[Any], v: Verdicts, slots_of: Callable[[list[Any]], dict[Stage, list[tuple[Any, str]]]]) -> Decision | None:
    """Apply the REDACTs in ``v`` where each maps onto exactly one text; else the decision that
    refuses the turn."""
    slots = slots_of(container)
    for stage, d in ((Stage.REASONING, v.reasoning), (Stage.RESPONSE, v.answer)):
        if d is None or d.action is not Action.REDACT:
            continue
        targets = slots[stage]
        if len(targets) != 1 or not targets[0][1]:
            return _not_applicable(d)
        obj, key = targets[0]
        _set(obj, key, d.text)
        if _get(obj, "logprobs"):
            _set(obj, "logprobs", [])
    return None


def ajudge_for(deps: Any, query: str, *, reasoning: bool, response: bool, metadata: dict[str, Any]) -> Judge:
    """``ajudge`` with this request's query, stages and metadata bound."""
    async def run(parts: list[Part]) -> Verdicts:
        unknown = [p.text for p in parts if p.kind is PartKind.UNKNOWN]
        if unknown and not reasoning:  # ajudge sends these to the reasoning stage, not judged here
            d = deps.unreadable(Stage.RESPONSE, "; ".join(unknown), metadata)
            if d.blocked:
                return Verdicts(stop=d)
            parts = [p for p in parts if p.kind is not PartKind.UNKNOWN]
        return await ajudge(deps, query, parts, reasoning=reasoning, response=response, metadata=metadata)
    return run
