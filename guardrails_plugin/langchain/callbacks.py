"""GuardCallbackHandler: guards a chat model's stream from LangChain callbacks.

Attach it with ``config={"callbacks": [handler]}`` (or to the model). It checks the newest user
message when the chat model starts, feeds the reasoning and answer deltas of every streamed chunk
to two monitors, raises ``GuardrailViolation`` to stop the stream as soon as a check blocks, and
checks the final response when the model ends.

What a callback can and cannot do: LangChain calls ``on_llm_new_token`` for a chunk just before
the model yields it, so raising there stops the stream before that chunk reaches the caller. A
callback cannot hold tokens back, though: it cannot buffer a chunk and let the stream go on, so
every chunk that arrived before the blocking check returned has already been yielded. There is
no hold-back here, for the answer either: the caller sees up to ``detection lag`` tokens past
the end of the blocking prefix (reported in
``handler.last_run.reasoning.stats.detection_lag_tokens``). When those tokens must not reach the
user, wrap the model in ``GuardedRunnable`` (which buffers and releases only checked text); in
an agent, ``GuardMiddleware`` turns the raised violation into a refusal.

The one delay it can impose is stalling the whole stream, and it does so exactly once per
response (``gate_answer=True``, the default): at the first answer token it waits for the final
check of the reasoning, so an answer never starts after a chain of thought that nobody has
finished checking (otherwise a short harmful trace could be followed by its answer before the
check returns). The cost is one guard call of latency before the first answer token.

LangChain swallows callback errors unless the handler sets ``raise_error=True``; both handlers
here set it, and ``run_inline=True`` so they run before the streaming handlers that forward
chunks to the caller (LangGraph's ``stream_mode="messages"``). Add the guard handler *first*.

Use ``GuardCallbackHandler`` with sync calls (``invoke``/``stream``) and
``AsyncGuardCallbackHandler`` with async ones: LangChain never propagates errors of async
handlers called from sync code.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from ..errors import GuardrailViolation
from ..guard import Guard
from ..monitor import ReasoningMonitor
from ..streaming import extract_deltas, tool_call_text
from ..types import Action, Decision, Stage
from ._common import turn_prompt

log = logging.getLogger("guardrails_plugin.langchain")


@dataclass
class RunState:
    """Per model run: the query and the two monitors (created on the first streamed token)."""

    query: str = ""
    reasoning: ReasoningMonitor | None = None
    answer: ReasoningMonitor | None = None
    streamed: bool = False
    gated: bool = False  # the reasoning before the answer has had its final check
    reasoning_segments: list[ReasoningMonitor] = field(default_factory=list)  # closed at the gate
    decisions: list[Decision] = field(default_factory=list)
    violation: GuardrailViolation | None = None


class _GuardCallbackBase:
    """State and decision logic shared by the sync and async handlers."""

    raise_error = True
    run_inline = True

    def __init__(
        self,
        guard: Guard,
        *,
        check_prompt: bool = True,
        check_reasoning: bool = True,
        check_response: bool = True,
        check_every_tokens: int | None = None,
        raise_on_redact: bool = True,
        gate_answer: bool = True,
        keep_runs: int = 32,
    ):
        self.guard = guard
        self.check_prompt = check_prompt
        self.check_reasoning = check_reasoning
        self.check_response = check_response
        self.check_every_tokens = check_every_tokens
        # A callback cannot rewrite text; stopping is the only way to keep redacted text away.
        self.raise_on_redact = raise_on_redact
        self.gate_answer = gate_answer
        self._runs: dict[UUID, RunState] = {}
        self._lock = threading.Lock()
        #: finished runs, newest last (for inspection: monitors, stats, decisions)
        self.finished: deque[RunState] = deque(maxlen=keep_runs)

    @property
    def last_run(self) -> RunState | None:
        with self._lock:
            if self.finished:
                return self.finished[-1]
            return next(reversed(self._runs.values()), None)

    # -- state --------------------------------------------------------------------------------
    def _start(self, run_id: UUID, messages: list[list[BaseMessage]]) -> RunState:
        content = turn_prompt(messages[0]) if messages else None
        query = content if isinstance(content, str) else _flat(content)
        state = RunState(query=query)
        with self._lock:
            self._runs[run_id] = state
        return state

    def _state(self, run_id: UUID) -> RunState:
        with self._lock:
            state = self._runs.get(run_id)
            if state is None:  # a model started without on_chat_model_start (plain LLM)
                state = self._runs[run_id] = RunState()
            return state

    def _finish(self, run_id: UUID) -> RunState | None:
        with self._lock:
            state = self._runs.pop(run_id, None)
            if state is not None:
                self.finished.append(state)
            return state

    @staticmethod
    def _discard(state: RunState | None) -> None:
        """Drop the monitors of a run that ended early (blocked, or the model failed): their
        pending checks and the engine state (KV cache) kept for them."""
        if state is None:
            return
        mons = {id(m): m for m in (*state.reasoning_segments, state.reasoning, state.answer) if m is not None}
        for mon in mons.values():
            try:
                mon.discard()
            except Exception:
                log.exception("could not discard a stream monitor")

    def _monitors(self, state: RunState) -> None:
        if state.reasoning is None:
            # hold_back=False: a callback cannot delay what it sees, so nothing is held.
            state.reasoning = self.guard.reasoning_monitor(
                query=state.query, check_every_tokens=self.check_every_tokens, hold_back=False
            )
            state.answer = self.guard.stream_monitor(
                Stage.RESPONSE, query=state.query, check_every_tokens=self.check_every_tokens,
                hold_back=False,
            )

    # -- decisions ----------------------------------------------------------------------------
    def _stops(self, decision: Decision) -> bool:
        return decision.blocked or (self.raise_on_redact and decision.action is Action.REDACT)

    def _raise_if(self, state: RunState, decision: Decision | None) -> None:
        if decision is None:
            return
        state.decisions.append(decision)
        if self._stops(decision):
            state.violation = GuardrailViolation(decision)
            raise state.violation

    def _raise_if_aborted(self, state: RunState) -> None:
        for mon in (state.reasoning, state.answer):
            if mon is not None and mon.aborted:
                assert mon.decision is not None
                if state.violation is None:
                    state.decisions.append(mon.decision)
                    state.violation = GuardrailViolation(mon.decision)
                raise state.violation

    def _deltas(self, state: RunState, token: Any, chunk: Any) -> tuple[str, str] | None:
        """The chunk's (reasoning, text); raises if a check has already blocked."""
        # Stop before looking at the chunk: once aborted, nothing more may go out.
        self._raise_if_aborted(state)
        if isinstance(chunk, ChatGenerationChunk):
            reasoning, text = extract_deltas(chunk.message)
            text += tool_call_text(chunk.message)  # tool-call arguments are judged with the answer
        elif isinstance(chunk, GenerationChunk):  # a completion (non-chat) LLM
            reasoning, text = "", chunk.text
        else:
            reasoning, text = "", token if isinstance(token, str) else ""
        if not reasoning and not text:
            return None
        state.streamed = True
        self._monitors(state)
        return reasoning, text

    def _gate_due(self, state: RunState, text: str) -> bool:
        """True at the first answer text after unchecked reasoning (see the module docstring)."""
        mon = state.reasoning
        return (
            bool(text) and self.gate_answer and self.check_reasoning and not state.gated
            and mon is not None and mon.stats.tokens_fed > 0
        )

    def _after_gate(self, state: RunState, decision: Decision) -> None:
        state.gated = True
        assert state.reasoning is not None
        state.reasoning_segments.append(state.reasoning)
        self._raise_if(state, decision)

    def _feed(self, state: RunState, reasoning: str, text: str) -> None:
        assert state.reasoning is not None and state.answer is not None
        if reasoning and self.check_reasoning:
            if state.gated:  # reasoning again after the answer began: a new segment
                state.gated = False
                state.reasoning = self.guard.reasoning_monitor(
                    query=state.query, check_every_tokens=self.check_every_tokens, hold_back=False
                )
            state.reasoning.feed(reasoning)
        if text and self.check_response:
            state.answer.feed(text)
        self._raise_if_aborted(state)

    @staticmethod
    def _final_message(response: LLMResult) -> BaseMessage | None:
        try:
            gen = response.generations[0][0]
        except IndexError:
            return None
        return getattr(gen, "message", None)


def _flat(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(
            p if isinstance(p, str) else str(p.get("text", "")) for p in content if isinstance(p, (str, dict))
        )
    return str(content)


class GuardCallbackHandler(_GuardCallbackBase, BaseCallbackHandler):
    """Sync handler: prompt check at chat-model start, streaming checks, final response check.

    Raises GuardrailViolation (propagated by LangChain: ``raise_error=True``) on BLOCK. Cannot
    hold tokens back; see the module docstring."""

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        state = self._start(run_id, messages)
        if self.check_prompt and state.query.strip():
            self._raise_if(state, self.guard.check_prompt(state.query))

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        state = self._state(run_id)
        deltas = self._deltas(state, token, chunk)
        if deltas is None:
            return
        if self._gate_due(state, deltas[1]):
            assert state.reasoning is not None
            self._after_gate(state, state.reasoning.close())
        self._feed(state, *deltas)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        state = self._finish(run_id) or RunState()
        if state.violation is not None:
            self._discard(state)
            raise state.violation
        if state.streamed:
            assert state.reasoning is not None and state.answer is not None
            if self.check_reasoning and not state.gated:
                self._raise_if(state, state.reasoning.close())
            if self.check_response:
                self._raise_if(state, state.answer.close())
            return
        msg = self._final_message(response)  # not streamed: judge the whole message once
        if msg is None:
            return
        reasoning, text = extract_deltas(msg)
        text += tool_call_text(msg)
        if reasoning and self.check_reasoning:
            self._raise_if(state, self.guard.check_reasoning(state.query, reasoning))
        if text and self.check_response:
            self._raise_if(state, self.guard.check_response(state.query, text))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._discard(self._finish(run_id))


class AsyncGuardCallbackHandler(_GuardCallbackBase, AsyncCallbackHandler):
    """Async twin of GuardCallbackHandler for ``ainvoke`` / ``astream`` / ``astream_events``."""

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        state = self._start(run_id, messages)
        if self.check_prompt and state.query.strip():
            self._raise_if(state, await self.guard.acheck_prompt(state.query))

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        state = self._state(run_id)
        deltas = self._deltas(state, token, chunk)
        if deltas is None:
            return
        if self._gate_due(state, deltas[1]):
            assert state.reasoning is not None
            self._after_gate(state, await state.reasoning.aclose())
        self._feed(state, *deltas)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        state = self._finish(run_id) or RunState()
        if state.violation is not None:
            self._discard(state)
            raise state.violation
        if state.streamed:
            assert state.reasoning is not None and state.answer is not None
            if self.check_reasoning and not state.gated:
                self._raise_if(state, await state.reasoning.aclose())
            if self.check_response:
                self._raise_if(state, await state.answer.aclose())
            return
        msg = self._final_message(response)
        if msg is None:
            return
        reasoning, text = extract_deltas(msg)
        text += tool_call_text(msg)
        if reasoning and self.check_reasoning:
            self._raise_if(state, await self.guard.acheck_reasoning(state.query, reasoning))
        if text and self.check_response:
            self._raise_if(state, await self.guard.acheck_response(state.query, text))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._discard(self._finish(run_id))
