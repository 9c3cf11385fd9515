"""Guarding a LiteLLM proxy stream: reasoning first, the answer held until checked.

Two ReasoningMonitors watch a stream: one on ``delta.reasoning_content`` / ``delta.reasoning``
(stage REASONING; streamed at once by default and aborted early) and one on ``delta.content``
(stage RESPONSE; held back until a completed check covered it). The answer is also gated on the
whole reasoning's verdict: its first chunk waits for the end-of-reasoning check.

Upstream chunks are passed on as the very objects LiteLLM produced, in order, so allowed traffic is
byte-identical to an unguarded proxy's. On BLOCK the stream ends with one last chunk carrying the
refusal and ``finish_reason="content_filter"`` (and the decision under
``provider_specific_fields["guardrails_plugin"]``); the upstream is closed. Nothing is raised once
the stream has started: an exception there drops the client's connection mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..monitor import ReasoningMonitor
from ..streaming import extract_deltas, tool_call_text
from ..types import Action, Decision, Stage

if TYPE_CHECKING:
    from .guardrail import GuardrailsPluginGuardrail

log = logging.getLogger("guardrails_plugin.litellm")

#: re-examine held chunks at least this often while the upstream is quiet (a check started by a
#: coalesced follow-up after the in-flight sample is not in the wait set)
_SAFETY_WAKE_S = 0.05


@dataclass
class _Held:
    chunk: Any
    reasoning_end: int  # reasoning chars fed up to and including this chunk
    content_end: int  # guarded answer chars fed up to and including this chunk
    gate: asyncio.Future[Decision] | None  # end-of-reasoning check this chunk's answer waits for


class _StreamGuard:
    def __init__(self, guardrail: GuardrailsPluginGuardrail, request_data: dict[str, Any]):
        self.g = guardrail
        self.guard = guardrail.guard
        self.meta = {"guardrail": guardrail._name()}
        # An unreadable prompt gives "": it must not stop the answer from being guarded.
        self.query = guardrail.query_text(request_data)
        self.model = request_data.get("model")
        self.guard_reasoning = guardrail.guards(Stage.REASONING)
        self.guard_content = guardrail.guards(Stage.RESPONSE)
        self.rmons: list[ReasoningMonitor] = []  # one per reasoning segment
        self.cmon: ReasoningMonitor | None = None
        self.gates: list[asyncio.Future[Decision]] = []
        self.gate: asyncio.Future[Decision] | None = None  # closing check of the current segment
        self.gate_of: dict[int, asyncio.Future[Decision]] = {}  # id(monitor) -> its closing check
        self.held: deque[_Held] = deque()
        self.reasoning_fed = 0
        self.reasoning_released = 0
        self.content_fed = 0
        self.content_released = 0
        self.last_chunk: Any = None
        self.reasoning_sent = 0  # chars actually passed downstream
        self.content_sent = 0

    # -- feeding ------------------------------------------------------------------------------
    def _rmon(self) -> ReasoningMonitor:
        if not self.rmons or self.gate is not None:  # reasoning after the answer began: new segment
            self.rmons.append(self.guard.reasoning_monitor(query=self.query, stage=Stage.REASONING, metadata=self.meta))
            self.gate = None
        return self.rmons[-1]

    def feed(self, chunk: Any) -> None:
        self.last_chunk = chunk
        reasoning, content = extract_deltas(chunk)
        # Tool-call arguments are guarded (and held back) with the answer.
        content += tool_call_text(chunk)
        if reasoning and self.guard_reasoning:
            self._rmon().feed(reasoning)
            self.reasoning_fed += len(reasoning)
        gate = None
        if content:
            if self.guard_reasoning and self.rmons:
                if self.gate is None:  # the answer starts: judge the whole reasoning before it shows
                    self.gate = asyncio.ensure_future(self.rmons[-1].aclose())
                    self.gates.append(self.gate)
                    self.gate_of[id(self.rmons[-1])] = self.gate
                gate = self.gate
            if self.guard_content:
                if self.cmon is None:
                    self.cmon = self.guard.reasoning_monitor(query=self.query, stage=Stage.RESPONSE, metadata=self.meta)
                self.cmon.feed(content)
                self.content_fed += len(content)
        self.held.append(_Held(chunk, self.reasoning_fed, self.content_fed, gate))

    # -- deciding -----------------------------------------------------------------------------
    def blocking(self) -> Decision | None:
        """The decision that ends the stream, if any check has blocked."""
        for m in self.rmons:
            if m.aborted:
                return m.decision
        if self.cmon is not None and self.cmon.aborted:
            return self.cmon.decision
        for gate in self.gates:
            if gate.done():
                d = _gate_result(gate, self.guard.config.refusal_message)
                if d.blocked or d.action is Action.REDACT:
                    return d
        return None

    def checks_in_flight(self) -> list[Any]:
        """The running checks' futures (a verdict may abort the stream or release held text)."""
        mons = [*self.rmons, *([self.cmon] if self.cmon is not None else [])]
        return [f for f in (m.check_in_flight for m in mons) if f is not None]

    def releasable(self) -> list[Any]:
        for m in self.rmons:
            self.reasoning_released += len(m.drain())
        if self.cmon is not None:
            self.content_released += len(self.cmon.drain())
        out = []
        while self.held:
            h = self.held[0]
            if self.guard_reasoning and h.reasoning_end > self.reasoning_released:
                break
            if self.guard_content and h.content_end > self.content_released:
                break
            if h.gate is not None and not h.gate.done():
                break
            out.append(self.held.popleft().chunk)
        return out

    def sent(self, chunk: Any) -> Any:
        r, c = extract_deltas(chunk)
        self.reasoning_sent += len(r)
        self.content_sent += len(c)
        return chunk

    async def finish(self) -> Decision | None:
        """End of upstream: the end-of-trace checks. Returns a blocking decision or None."""
        for m in self.rmons:
            gate = self.gate_of.get(id(m)) or asyncio.ensure_future(m.aclose())
            with contextlib.suppress(BaseException):
                await gate
            d = _gate_result(gate, self.guard.config.refusal_message)
            if d.blocked or d.action is Action.REDACT:
                return m.decision or d
        if self.cmon is not None:
            d = await self.cmon.aclose()
            if d.blocked or d.action is Action.REDACT:
                return self.cmon.decision or d
        return None

    def refusal_chunk(self, decision: Decision) -> Any:
        from litellm.types.utils import Delta, ModelResponseStream, StreamingChoices

        from .guardrail import decision_payload

        last = self.last_chunk
        text = decision.text if decision.blocked else self.guard.config.refusal_message
        return ModelResponseStream(
            id=getattr(last, "id", None) or f"chatcmpl-{uuid.uuid4().hex}",
            model=getattr(last, "model", None) or self.model,
            created=getattr(last, "created", None) or int(time.time()),
            choices=[StreamingChoices(index=0, delta=Delta(content=text), finish_reason="content_filter")],
            provider_specific_fields={"guardrails_plugin": {**decision_payload(decision, self.g._name()), **self.abort_info()}},
        )

    def abort_info(self) -> dict[str, Any]:
        """Where the stream was cut, in the monitors' token units (approx_tokens)."""
        mons = [m for m in self.rmons if m.aborted] or ([self.cmon] if self.cmon is not None and self.cmon.aborted else [])
        info: dict[str, Any] = {"reasoning_chars_sent": self.reasoning_sent, "content_chars_sent": self.content_sent}
        if mons:
            info["abort_offset_tokens"] = mons[0].abort_offset
            info["detection_lag_tokens"] = mons[0].stats.detection_lag_tokens
        return info

    def discard(self) -> None:
        """Drop the monitors of a stream cut short (blocked, or the client went away): their
        pending checks and the engine state (KV cache) kept for them. Never raises."""
        for m in [*self.rmons, *([self.cmon] if self.cmon is not None else [])]:
            try:
                m.discard()
            except Exception:
                log.exception("guardrails-plugin could not discard a stream monitor")

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rmons:
            out["reasoning"] = self.rmons[-1].stats.model_dump()
        if self.cmon is not None:
            out["response"] = self.cmon.stats.model_dump()
        return out


def _gate_result(gate: Any, refusal: str) -> Decision:
    try:
        return gate.result()
    except BaseException as exc:  # the closing check itself failed: fail closed
        return Decision(action=Action.BLOCK, stage=Stage.REASONING, text=refusal, reason=f"monitor_error: {exc!r}")


async def guard_stream(
    guardrail: GuardrailsPluginGuardrail, response: Any, request_data: dict[str, Any]
) -> AsyncIterator[Any]:
    """The guarded stream (the body of the guardrail's streaming-iterator hook)."""
    if not (guardrail.guards(Stage.REASONING) or guardrail.guards(Stage.RESPONSE)):
        async for chunk in response:
            yield chunk
        return

    it = response.__aiter__()
    s = _StreamGuard(guardrail, request_data)
    next_task: asyncio.Task[Any] | None = None
    upstream_done = False
    blocked: Decision | None = None
    checking: list[Any] = []

    async def _next() -> Any:
        return await it.__anext__()

    try:
        while True:
            if next_task is None and not upstream_done:
                next_task = asyncio.ensure_future(_next())
            waiting: set[asyncio.Future[Any]] = {next_task} if next_task is not None else set()
            waiting.update(g for g in s.gates if not g.done())
            # Wake when a check completes (checks run on the guard's own loop thread) rather than
            # polling; the timeout is only a safety net for a check that starts after the sample.
            waiting.update(asyncio.wrap_future(f) for f in checking)
            if waiting:
                await asyncio.wait(waiting, timeout=_SAFETY_WAKE_S if s.held or checking else None,
                                   return_when=asyncio.FIRST_COMPLETED)
            if next_task is not None and next_task.done():
                task, next_task = next_task, None
                try:
                    chunk = task.result()
                except StopAsyncIteration:
                    upstream_done = True
                else:  # upstream errors propagate exactly as they would without the guard
                    try:
                        s.feed(chunk)
                    except Exception as exc:  # our bug must not leak unchecked text: fail closed
                        log.exception("guardrails-plugin stream guard failed")
                        blocked = _internal_error(exc, s)
            # Sample "a check is in flight" BEFORE looking for a block: a check that completes after
            # the sample is caught by the next poll; one sampled as done is seen by blocking().
            checking = s.checks_in_flight()
            blocked = blocked or s.blocking()
            if blocked is not None:
                break
            for chunk in s.releasable():
                yield s.sent(chunk)
            if upstream_done:
                try:
                    blocked = await s.finish()
                except Exception as exc:
                    log.exception("guardrails-plugin end-of-stream check failed")
                    blocked = _internal_error(exc, s)
                if blocked is None:
                    for chunk in s.releasable():
                        yield s.sent(chunk)
                    for h in list(s.held):  # all checks passed: nothing may stay behind
                        yield s.sent(h.chunk)
                    s.held.clear()
                break
        if blocked is not None:
            log.info("guardrails-plugin ended a stream: %s %s (%s) stats=%s",
                     blocked.stage, blocked.action, blocked.reason, s.stats())
            yield s.refusal_chunk(blocked)
    finally:
        if next_task is not None and not next_task.done():
            next_task.cancel()
            with contextlib.suppress(BaseException):
                await next_task
        if blocked is not None or not upstream_done:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        for g in s.gates:
            if not g.done():
                g.cancel()
        if blocked is not None or not upstream_done:
            s.discard()


def _internal_error(exc: Exception, s: _StreamGuard) -> Decision:
    return Decision(action=Action.BLOCK, stage=Stage.RESPONSE, text=s.guard.config.refusal_message,
                    reason=f"guard_error: {exc!r}")
