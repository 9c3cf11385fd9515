"""The loopback upstream's answers in the OpenAI Responses and Anthropic Messages wire formats, built
with the ``openai`` and ``anthropic`` SDKs' own types so the events are what those APIs send.

Test support, not a test module. ``Script`` (upstream.py) says what a turn contains: reasoning
deltas, answer deltas and tool-call argument fragments; these functions lay it out as one
non-streamed body or as the SSE events of a stream (an async generator of ``(event, payload)``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from anthropic import types as at
from openai.types import responses as rt

Pace = Callable[[int, str], Awaitable[None]]  # awaited before each delta (index, kind)

TOOL_NAME = "send_email"


def _dump(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


# -- OpenAI Responses -------------------------------------------------------------------------------
def _response(model: str, rid: str, status: str, output: list[Any], instructions: Any = None) -> rt.Response:
    return rt.Response(
        id=rid, created_at=int(time.time()), model=model, object="response", output=output, status=status,
        parallel_tool_calls=True, tool_choice="auto", tools=[], instructions=instructions,
        usage=rt.ResponseUsage(input_tokens=5, output_tokens=20, total_tokens=25,
                               input_tokens_details={"cached_tokens": 0, "cache_write_tokens": 0},
                               output_tokens_details={"reasoning_tokens": 10}) if status == "completed" else None,
    )


def _reasoning_item(rid: str, text: str, summary: bool) -> rt.ResponseReasoningItem:
    if summary:
        return rt.ResponseReasoningItem(id=f"rs_{rid}", type="reasoning", status="completed",
                                        summary=[{"type": "summary_text", "text": text}])
    return rt.ResponseReasoningItem(id=f"rs_{rid}", type="reasoning", status="completed", summary=[],
                                    content=[{"type": "reasoning_text", "text": text}])


def _message_item(rid: str, text: str, status: str = "completed") -> rt.ResponseOutputMessage:
    return rt.ResponseOutputMessage(
        id=f"msg_{rid}", type="message", role="assistant", status=status,
        content=[rt.ResponseOutputText(type="output_text", text=text, annotations=[])] if text or status == "completed" else [],
    )


def _call_item(rid: str, args: str, status: str = "completed") -> rt.ResponseFunctionToolCall:
    return rt.ResponseFunctionToolCall(id=f"fc_{rid}", call_id=f"call_{rid}", type="function_call",
                                       name=TOOL_NAME, arguments=args, status=status)


def responses_body(s: Any, model: str, summary: bool = False, rid: str | None = None) -> dict[str, Any]:
    rid = rid or uuid.uuid4().hex[:12]
    output: list[Any] = []
    if s.reasoning:
        output.append(_reasoning_item(rid, "".join(s.reasoning), summary))
    if s.content:
        output.append(_message_item(rid, "".join(s.content)))
    if s.tool_args:
        output.append(_call_item(rid, "".join(s.tool_args)))
    return _dump(_response(model, f"resp_{rid}", "completed", output))


async def responses_events(s: Any, model: str, pace: Pace, summary: bool = False,
                           rid: str | None = None) -> AsyncIterator[tuple[str, dict]]:
    rid = rid or uuid.uuid4().hex[:12]
    resp_id = f"resp_{rid}"
    seq = iter(range(10_000))
    out: list[Any] = []

    def ev(cls: Any, **kw: Any) -> tuple[str, dict]:
        e = cls(sequence_number=next(seq), **kw)
        return e.type, _dump(e)

    yield ev(rt.ResponseCreatedEvent, type="response.created", response=_response(model, resp_id, "in_progress", []))
    yield ev(rt.ResponseInProgressEvent, type="response.in_progress", response=_response(model, resp_id, "in_progress", []))
    i = 0
    if s.reasoning:
        item = _reasoning_item(rid, "", summary)
        item_id, idx = item.id, len(out)
        yield ev(rt.ResponseOutputItemAddedEvent, type="response.output_item.added", output_index=idx,
                 item=item.model_copy(update={"status": "in_progress"}))
        if summary:
            yield ev(rt.ResponseReasoningSummaryPartAddedEvent, type="response.reasoning_summary_part.added",
                     item_id=item_id, output_index=idx, summary_index=0, part={"type": "summary_text", "text": ""})
        for r in s.reasoning:
            await pace(i, "reasoning")
            i += 1
            if summary:
                yield ev(rt.ResponseReasoningSummaryTextDeltaEvent, type="response.reasoning_summary_text.delta",
                         item_id=item_id, output_index=idx, summary_index=0, delta=r)
            else:
                yield ev(rt.ResponseReasoningTextDeltaEvent, type="response.reasoning_text.delta", item_id=item_id,
                         output_index=idx, content_index=0, delta=r)
        text = "".join(s.reasoning)
        if summary:
            yield ev(rt.ResponseReasoningSummaryTextDoneEvent, type="response.reasoning_summary_text.done",
                     item_id=item_id, output_index=idx, summary_index=0, text=text)
        else:
            yield ev(rt.ResponseReasoningTextDoneEvent, type="response.reasoning_text.done", item_id=item_id,
                     output_index=idx, content_index=0, text=text)
        done = _reasoning_item(rid, text, summary)
        out.append(done)
        yield ev(rt.ResponseOutputItemDoneEvent, type="response.output_item.done", output_index=idx, item=done)
    if s.content:
        item_id, idx = f"msg_{rid}", len(out)
        yield ev(rt.ResponseOutputItemAddedEvent, type="response.output_item.added", output_index=idx,
                 item=_message_item(rid, "", "in_progress"))
        yield ev(rt.ResponseContentPartAddedEvent, type="response.content_part.added", item_id=item_id,
                 output_index=idx, content_index=0, part={"type": "output_text", "text": "", "annotations": []})
        for c in s.content:
            await pace(i, "content")
            i += 1
            yield ev(rt.ResponseTextDeltaEvent, type="response.output_text.delta", item_id=item_id, output_index=idx,
                     content_index=0, delta=c, logprobs=[])
        text = "".join(s.content)
        yield ev(rt.ResponseTextDoneEvent, type="response.output_text.done", item_id=item_id, output_index=idx,
                 content_index=0, text=text, logprobs=[])
        yield ev(rt.ResponseContentPartDoneEvent, type="response.content_part.done", item_id=item_id,
                 output_index=idx, content_index=0, part={"type": "output_text", "text": text, "annotations": []})
        done_msg = _message_item(rid, text)
        out.append(done_msg)
        yield ev(rt.ResponseOutputItemDoneEvent, type="response.output_item.done", output_index=idx, item=done_msg)
    if s.tool_args:
        item_id, idx = f"fc_{rid}", len(out)
        yield ev(rt.ResponseOutputItemAddedEvent, type="response.output_item.added", output_index=idx,
                 item=_call_item(rid, "", "in_progress"))
        for a in s.tool_args:
            await pace(i, "tool")
            i += 1
            yield ev(rt.ResponseFunctionCallArgumentsDeltaEvent, type="response.function_call_arguments.delta",
                     item_id=item_id, output_index=idx, delta=a)
        args = "".join(s.tool_args)
        yield ev(rt.ResponseFunctionCallArgumentsDoneEvent, type="response.function_call_arguments.done",
                 item_id=item_id, output_index=idx, arguments=args, name=TOOL_NAME)
        done_call = _call_item(rid, args)
        out.append(done_call)
        yield ev(rt.ResponseOutputItemDoneEvent, type="response.output_item.done", output_index=idx, item=done_call)
    yield ev(rt.ResponseCompletedEvent, type="response.completed", response=_response(model, resp_id, "completed", out))


# -- Anthropic Messages -----------------------------------------------------------------------------
def _usage() -> at.Usage:
    return at.Usage(input_tokens=5, output_tokens=20)


def messages_body(s: Any, model: str, rid: str | None = None) -> dict[str, Any]:
    content: list[Any] = []
    if s.reasoning:
        content.append(at.ThinkingBlock(type="thinking", thinking="".join(s.reasoning), signature="sig"))
    if s.content:
        content.append(at.TextBlock(type="text", text="".join(s.content)))
    if s.tool_args:
        content.append(at.ToolUseBlock(type="tool_use", id="toolu_1", name=TOOL_NAME, input=json.loads("".join(s.tool_args))))
    msg = at.Message(id=f"msg_{rid or uuid.uuid4().hex[:12]}", type="message", role="assistant", model=model,
                     content=content, stop_reason="tool_use" if s.tool_args else "end_turn", usage=_usage())
    return _dump(msg)


async def messages_events(s: Any, model: str, pace: Pace, rid: str | None = None) -> AsyncIterator[tuple[str, dict]]:
    start = at.Message(id=f"msg_{rid or uuid.uuid4().hex[:12]}", type="message", role="assistant", model=model,
                       content=[], usage=at.Usage(input_tokens=5, output_tokens=1))
    yield "message_start", _dump(at.RawMessageStartEvent(type="message_start", message=start))
    index, i = 0, 0

    def block_start(block: Any) -> tuple[str, dict]:
        return "content_block_start", _dump(at.RawContentBlockStartEvent(type="content_block_start", index=index,
                                                                          content_block=block))

    def delta(d: Any) -> tuple[str, dict]:
        return "content_block_delta", _dump(at.RawContentBlockDeltaEvent(type="content_block_delta", index=index, delta=d))

    def stop() -> tuple[str, dict]:
        return "content_block_stop", {"type": "content_block_stop", "index": index}

    if s.reasoning:
        yield block_start(at.ThinkingBlock(type="thinking", thinking="", signature=""))
        for r in s.reasoning:
            await pace(i, "reasoning")
            i += 1
            yield delta(at.ThinkingDelta(type="thinking_delta", thinking=r))
        yield delta(at.SignatureDelta(type="signature_delta", signature="sig"))
        yield stop()
        index += 1
    if s.content:
        yield block_start(at.TextBlock(type="text", text=""))
        for c in s.content:
            await pace(i, "content")
            i += 1
            yield delta(at.TextDelta(type="text_delta", text=c))
        yield stop()
        index += 1
    if s.tool_args:
        yield block_start(at.ToolUseBlock(type="tool_use", id="toolu_1", name=TOOL_NAME, input={}))
        for a in s.tool_args:
            await pace(i, "tool")
            i += 1
            yield delta(at.InputJSONDelta(type="input_json_delta", partial_json=a))
        yield stop()
    yield "message_delta", _dump(at.RawMessageDeltaEvent(
        type="message_delta", delta={"stop_reason": "tool_use" if s.tool_args else "end_turn", "stop_sequence": None},
        usage={"output_tokens": 20}))
    yield "message_stop", {"type": "message_stop"}
