"""Guarding a LiteLLM proxy stream, whatever its wire format: items in, parts to the turn guard,
its releases out, and one refusal in the format's own terms.

The rules (reasoning streamed and cut early, the answer and tool calls held until checked, the
answer gated on the whole reasoning's verdict, one set of checks per choice index) live in
``guardrails_plugin.stream``; this module only translates. Formats, told apart by the items:

* **chat** (``ModelResponseStream``) and **completions** (``TextCompletionResponse``): parts per
  choice index; a stop ends with one chunk per choice carrying the refusal and
  ``finish_reason="content_filter"``.
* **responses** (OpenAI Responses events, LiteLLM objects): reasoning text and summary deltas,
  output text, function-call arguments; a stop closes the items left open, adds the refusal as a
  message item and ends with ``response.incomplete`` whose ``incomplete_details.reason`` is
  ``content_filter``.
* **messages** (Anthropic SSE bytes): split into whole events first (an event cut across two
  network chunks must not go out half-checked); text, thinking and tool-input deltas; a stop
  closes the open block, adds the refusal as a text block and ends with ``stop_reason: refusal``.

Allowed items pass as the very objects LiteLLM produced (Anthropic bytes: the same bytes, cut at
event boundaries), so allowed traffic is byte-identical to an unguarded proxy's. The decision
rides on the terminal (``guardrails_plugin``). Nothing is raised once the stream has started: an
exception there drops the client's connection mid-body. An item of a kind nobody can read is
judged by the fail mode.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..stream import Part, PartKind, TurnRunner, adrive, parts_of
from ..stream.events import EventParts
from ..types import Decision, Stage

log = logging.getLogger("guardrails_plugin.litellm")

Payload = Callable[[Decision], Awaitable[dict[str, Any]]]
#: Responses events whose content a well-formed ending depends on (ids, open items, the end)
_TRACKED = frozenset({"response.created", "response.in_progress", "response.output_item.added",
                      "response.output_item.done", "response.completed", "response.incomplete", "response.failed"})


async def guard_stream(runner: TurnRunner, response: Any, model: Any, payload: Payload) -> AsyncIterator[Any]:
    """The upstream ``response`` through ``runner``'s turn guard, ended by a refusal on a stop."""
    wire = Wire(runner)
    async for item in adrive(runner, wire.frames(response), wire.parts):
        wire.sent(item)
        yield item
    if runner.stop is not None:
        info = abort_info(runner)
        log.info("guardrails-plugin ended a %s stream: %s %s (%s) %s", wire.kind, runner.stop.stage,
                 runner.stop.action, runner.stop.reason, info)
        body = {**await payload(runner.stop), **info}
        for item in wire.terminal(runner, model, body):
            yield item


def abort_info(runner: TurnRunner) -> dict[str, Any]:
    """What reached the client (chars of choice 0) and where the stream was cut (in the monitors'
    token units, approx_tokens)."""
    turn = runner.turn
    info: dict[str, Any] = {
        "reasoning_chars_sent": len(turn.released_text(Stage.REASONING)),
        "content_chars_sent": len(turn.released_text(Stage.RESPONSE)),
    }
    t = turn.stopped_track()
    if t is not None:
        info["abort_offset_tokens"] = t.abort_offset
        info["detection_lag_tokens"] = t.detection_lag
    return info


class Wire:
    """One stream's format, its parts, and what went out (for a well-formed ending)."""

    def __init__(self, runner: TurnRunner):
        self.runner = runner
        self.kind: str | None = None
        self.events = EventParts()
        self.bytes_type: type = bytes
        # what the client has seen (Responses / Messages): ids, open items, numbering
        self.opened: dict[Any, Any] = {}
        self.seq = -1
        self.next_index = 0
        self.response: dict[str, Any] = {}
        self.started = False
        self.finished = False

    # -- framing and parts ----------------------------------------------------------------------
    async def frames(self, response: Any) -> AsyncIterator[Any]:
        """Upstream items; SSE bytes regrouped into whole events."""
        buf = ""
        try:
            async for item in response:
                if isinstance(item, (bytes, str)):
                    self.bytes_type = type(item)
                    buf += item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item
                    *whole, buf = buf.replace("\r\n", "\n").split("\n\n")
                    if whole:
                        yield self._encode("".join(f"{e}\n\n" for e in whole))
                else:
                    yield item
            if buf:
                yield self._encode(buf)
        finally:
            aclose = getattr(response, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # closing an upstream that failed must not raise over its error
                    log.debug("closing the upstream stream failed", exc_info=True)

    def _encode(self, text: str) -> Any:
        return text.encode("utf-8") if self.bytes_type is bytes else text

    def parts(self, item: Any) -> list[Part]:
        if isinstance(item, (bytes, str)):
            self.kind = self.kind or "messages"
            return [p for e in sse_events(item) for p in self._event_parts(e)]
        if hasattr(item, "choices") or (isinstance(item, dict) and "choices" in item):
            return self._choice_parts(item)
        if isinstance(getattr(item, "type", None), str) or (isinstance(item, dict) and "type" in item):
            self.kind = self.kind or "responses"
            return self._unknown_to_stage(self.events(item))
        return [Part(PartKind.UNKNOWN_ANSWER, f"stream item of type {type(item).__name__}")]

    def _event_parts(self, event: Any) -> list[Part]:
        if event is None:
            return [Part(PartKind.UNKNOWN_ANSWER, "an SSE event that is not JSON")]
        if isinstance(event, dict) and "choices" in event:
            return self._choice_parts(event)
        return self._unknown_to_stage(self.events(event))

    def _choice_parts(self, item: Any) -> list[Part]:
        choices = _get(item, "choices") or []
        if choices and all(_get(c, "delta") is None and _get(c, "message") is None for c in choices):
            self.kind = self.kind or "completions"
            out: list[Part] = []
            for pos, c in enumerate(choices):
                index = _get(c, "index")
                index = index if isinstance(index, int) else pos
                for kind, key in ((PartKind.REASONING, "reasoning_content"), (PartKind.ANSWER, "text")):
                    value = _get(c, key)
                    if isinstance(value, str) and value:
                        out.append(Part(kind, value, index))
            return out
        self.kind = self.kind or "chat"
        return parts_of(item)

    def _unknown_to_stage(self, parts: list[Part]) -> list[Part]:
        """An event nobody can read goes to the fail mode of a stage this turn judges: the turn
        guard sends UNKNOWN parts to the reasoning stage's; without reasoning checks, the
        response stage's decides here."""
        if self.runner.turn.judges[Stage.REASONING] or not any(p.kind is PartKind.UNKNOWN for p in parts):
            return parts
        for p in parts:
            if p.kind is PartKind.UNKNOWN:
                d = self.runner.deps.unreadable(Stage.RESPONSE, p.text, self.runner.turn.metadata)
                if d.blocked:
                    self.runner.abort(d)
                    return []
        return [p for p in parts if p.kind is not PartKind.UNKNOWN]

    # -- what went out --------------------------------------------------------------------------
    def sent(self, item: Any) -> None:
        if self.kind == "messages":
            for e in sse_events(item):
                self._sent_event(e or {})
        elif self.kind == "responses":
            if isinstance(item, dict) or _get(item, "type") in _TRACKED:
                self._sent_event(item if isinstance(item, dict) else item.model_dump(mode="json"))
            elif isinstance(_get(item, "sequence_number"), int):  # deltas: only their numbering matters
                self.seq = max(self.seq, _get(item, "sequence_number"))

    def _sent_event(self, e: dict[str, Any]) -> None:
        kind = e.get("type")
        self.seq = max(self.seq, e.get("sequence_number") or -1)
        if kind in ("message_start", "response.created", "response.in_progress"):
            self.started = True
            self.response = {**self.response, **(e.get("message") or e.get("response") or {})}
        elif kind == "content_block_start":
            self.opened[e.get("index")] = e.get("content_block")
            self.next_index = max(self.next_index, (e.get("index") or 0) + 1)
        elif kind == "content_block_stop":
            self.opened.pop(e.get("index"), None)
        elif kind == "response.output_item.added":
            item = e.get("item") or {}
            self.opened[item.get("id")] = (e.get("output_index"), item)
            self.next_index = max(self.next_index, (e.get("output_index") or 0) + 1)
        elif kind == "response.output_item.done":
            self.opened.pop((e.get("item") or {}).get("id"), None)
        elif kind in ("message_stop", "response.completed", "response.incomplete", "response.failed"):
            self.finished = True

    # -- the refusal ----------------------------------------------------------------------------
    def terminal(self, runner: TurnRunner, model: Any, body: dict[str, Any]) -> list[Any]:
        d: Decision = runner.stop  # type: ignore[assignment]
        text = d.text if d.blocked else runner.deps.config.refusal_message
        if self.finished:  # the upstream's own end already went out: nothing can follow it
            log.warning("guardrails-plugin: stream stopped after its end was sent (%s)", d.reason)
            return []
        if self.kind == "messages":
            return [self._encode(x) for x in self._messages_terminal(text, model, body)]
        if self.kind == "responses":
            return self._responses_terminal(text, model, body)
        if self.kind == "completions":
            return [completion_refusal(runner, text, model, body)]
        return [chat_refusal(runner, text, model, body)]

    def _messages_terminal(self, text: str, model: Any, body: dict[str, Any]) -> list[str]:
        out = []
        if not self.started:
            out.append(_sse("message_start", {"type": "message_start", "message": {
                "id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}))
        for index in list(self.opened):
            out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        i = self.next_index
        out += [
            _sse("content_block_start", {"type": "content_block_start", "index": i,
                                         "content_block": {"type": "text", "text": ""}}),
            _sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                         "delta": {"type": "text_delta", "text": text}}),
            _sse("content_block_stop", {"type": "content_block_stop", "index": i}),
            _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None},
                                   "usage": {"output_tokens": 0}, "guardrails_plugin": body}),
            _sse("message_stop", {"type": "message_stop"}),
        ]
        return out

    def _responses_terminal(self, text: str, model: Any, body: dict[str, Any]) -> list[Any]:
        from litellm.types.llms.openai import GenericEvent

        rid = self.response.get("id") or f"resp_{uuid.uuid4().hex}"
        created = self.response.get("created_at") or int(time.time())
        model = self.response.get("model") or model
        events: list[dict[str, Any]] = []
        if not self.started:
            events.append({"type": "response.created", "response": _response(rid, created, model, "in_progress", [])})
        for _, (index, item) in list(self.opened.items()):
            events.append({"type": "response.output_item.done", "output_index": index,
                           "item": {**item, "status": "incomplete"}})
        item_id, index = f"msg_{uuid.uuid4().hex}", self.next_index
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"id": item_id, "type": "message", "role": "assistant", "status": "completed", "content": [part]}
        events += [
            {"type": "response.output_item.added", "output_index": index, "item": {**item, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", "item_id": item_id, "output_index": index, "content_index": 0,
             "part": {**part, "text": ""}},
            {"type": "response.output_text.delta", "item_id": item_id, "output_index": index, "content_index": 0,
             "delta": text, "logprobs": []},
            {"type": "response.output_text.done", "item_id": item_id, "output_index": index, "content_index": 0,
             "text": text, "logprobs": []},
            {"type": "response.content_part.done", "item_id": item_id, "output_index": index, "content_index": 0,
             "part": part},
            {"type": "response.output_item.done", "output_index": index, "item": item},
            {"type": "response.incomplete", "response": {
                **_response(rid, created, model, "incomplete", [item]),
                "incomplete_details": {"reason": "content_filter"}}, "guardrails_plugin": body},
        ]
        return [GenericEvent(**{**e, "sequence_number": self.seq + 1 + n}) for n, e in enumerate(events)]


def _response(rid: str, created: int, model: Any, status: str, output: list[Any]) -> dict[str, Any]:
    return {"id": rid, "object": "response", "created_at": created, "model": model, "status": status,
            "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def sse_events(frame: Any) -> list[dict[str, Any] | None]:
    """The JSON events of an SSE frame (None for a data line that is not JSON)."""
    text = frame.decode("utf-8", errors="replace") if isinstance(frame, bytes) else frame
    out: list[dict[str, Any] | None] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if not data or data == "[DONE]":
            continue
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        out.append(event if isinstance(event, dict) or event is None else None)
    return out


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _choice_indexes(runner: TurnRunner) -> list[int]:
    return sorted(runner.turn.choices) or [0]


def chat_refusal(runner: TurnRunner, text: str, model: Any, body: dict[str, Any]) -> Any:
    from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

    last = runner.turn.last_item
    return ModelResponseStream(
        id=_get(last, "id") or f"chatcmpl-{uuid.uuid4().hex}",
        model=_get(last, "model") or model,
        created=_get(last, "created") or int(time.time()),
        choices=[StreamingChoices(index=i, delta=Delta(content=text), finish_reason="content_filter")
                 for i in _choice_indexes(runner)],
        provider_specific_fields={"guardrails_plugin": body},
    )


def completion_refusal(runner: TurnRunner, text: str, model: Any, body: dict[str, Any]) -> Any:
    from litellm.types.utils import TextChoices, TextCompletionResponse

    last = runner.turn.last_item
    out = TextCompletionResponse(
        id=_get(last, "id") or f"cmpl-{uuid.uuid4().hex}", model=_get(last, "model") or model,
        created=_get(last, "created") or int(time.time()), object="text_completion",
        choices=[TextChoices(index=i, text=text, finish_reason="content_filter", logprobs=None)
                 for i in _choice_indexes(runner)],
    )
    out.guardrails_plugin = body  # type: ignore[attr-defined]
    return out
