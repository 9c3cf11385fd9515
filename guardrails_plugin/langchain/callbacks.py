"""GuardCallbackHandler: guards a chat model's stream from LangChain callbacks.

Attach it with ``config={"callbacks": [handler]}`` (first, before handlers that forward chunks).
It checks the user turn when a chat model starts (a plain completion LLM: its whole prompt, at
``on_llm_start``), feeds every streamed chunk to a turn guard
(``guardrails_plugin.stream``), raises ``GuardrailViolation`` to stop the stream as soon as a
check blocks, and runs the end-of-turn checks when the model ends.

LangChain calls ``on_llm_new_token`` just before the model yields a chunk, so raising there
stops the stream before that chunk reaches the caller. A callback cannot hold chunks back,
though, so nothing is held here, the answer included: the caller may see up to the detection lag
past the blocking prefix (``handler.last_run.reasoning.stats.detection_lag_tokens``). When that
must not happen, wrap the model in ``GuardedRunnable``; in an agent, ``GuardMiddleware`` turns the
raised violation into a refusal. The one delay a callback can impose is a stall, once per
reasoning segment (``gate_answer=True``): the first answer token waits for the reasoning's final
check, so no answer follows a chain of thought nobody finished checking (one guard call).

Both handlers set ``raise_error=True`` (LangChain swallows callback errors otherwise) and
``run_inline=True``. Use ``GuardCallbackHandler`` with sync calls and ``AsyncGuardCallbackHandler``
with async ones: LangChain never propagates errors of async handlers called from sync code.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from ..content import normalize_text
from ..errors import GuardrailViolation
from ..guard import Guard
from ..stream import Part, PartKind, TurnGuard, TurnRunner, Verdicts, ajudge, judge, parts_of
from ..types import Action, Decision
from ._common import turn_prompt


@dataclass
class RunState:
    """One model run: its query, its turn guard (from the first streamed token), its violation."""

    query: str = ""
    runner: TurnRunner | None = None
    violation: GuardrailViolation | None = None

    turn = property(lambda self: self.runner.turn if self.runner is not None else None)
    #: the reasoning / answer track (``.stats``: checks, abort offset, detection lag)
    reasoning = property(lambda self: self.turn.reasoning if self.turn is not None else None)
    answer = property(lambda self: self.turn.answer if self.turn is not None else None)


def _settled(turn: TurnGuard) -> bool:
    return turn.settled


def _flushed(turn: TurnGuard) -> bool:
    """Release what may go (the gate may hold an answer token); True when nothing is left."""
    turn.release()
    return turn.stop is not None or not turn.held


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
        #: finished runs, newest last (for inspection: turn guards, stats, decisions)
        self.finished: deque[RunState] = deque(maxlen=keep_runs)

    @property
    def last_run(self) -> RunState | None:
        with self._lock:
            return self.finished[-1] if self.finished else next(reversed(self._runs.values()), None)

    def _start(self, run_id: UUID, messages: list[list[BaseMessage]]) -> RunState:
        turn = turn_prompt(messages[0]) if messages else None
        state = RunState(query=normalize_text(turn, what="prompt").value if turn else "")
        with self._lock:
            self._runs[run_id] = state
        return state

    def _start_prompts(self, run_id: UUID, prompts: list[str]) -> RunState:
        """A plain (completion) LLM: its prompt text is all the caller's, judged whole."""
        state = RunState(query=normalize_text("\n".join(p for p in prompts if isinstance(p, str)), what="prompt").value)
        with self._lock:
            self._runs[run_id] = state
        return state

    def _stop(self, state: RunState, decision: Decision | None) -> None:
        if decision is not None and (decision.blocked or (self.raise_on_redact and decision.action is Action.REDACT)):
            state.violation = state.violation or GuardrailViolation(decision)
            raise state.violation

    def _feed(self, run_id: UUID, token: Any, chunk: Any) -> RunState | None:
        """Feed a chunk; the run if it was fed (then wait for the gate), None if it carried nothing."""
        with self._lock:  # a model started without on_chat_model_start (plain LLM) has no state yet
            state = self._runs.get(run_id) or self._runs.setdefault(run_id, RunState())
        if state.runner is not None:  # stop before looking at the chunk: once stopped, nothing more goes out
            self._stop(state, state.runner.stop)
        if isinstance(chunk, ChatGenerationChunk):
            parts = parts_of(chunk.message)
        else:  # a completion (non-chat) LLM
            text = chunk.text if isinstance(chunk, GenerationChunk) else token if isinstance(token, str) else ""
            parts = [Part(PartKind.ANSWER, text)] if text else []
        if not parts:
            return None
        if state.runner is None:  # hold nothing: a callback cannot delay what it sees
            state.runner = TurnRunner.of(
                self.guard.stream_checks(), state.query, reasoning=self.check_reasoning,
                response=self.check_response, hold_back_reasoning=False, hold_back_answer=False,
                hold_tools=False, gate_answer=self.gate_answer, check_every_tokens=self.check_every_tokens)
        state.runner.feed(None, parts)
        return state

    def _finish(self, run_id: UUID, error: bool = False) -> RunState:
        with self._lock:
            state = self._runs.pop(run_id, None) or RunState()
            self.finished.append(state)
        if error or state.violation is not None:  # ended early (blocked, or the model failed)
            if state.runner is not None:
                state.runner.finish()
            if state.violation is not None and not error:
                raise state.violation
        return state

    def _final_parts(self, response: LLMResult) -> list[Part]:
        try:
            return parts_of(getattr(response.generations[0][0], "message", None))
        except IndexError:
            return []

    def _verdicts(self, state: RunState, v: Verdicts) -> None:
        for d in (v.stop, v.reasoning, v.answer):
            self._stop(state, d)



class GuardCallbackHandler(_GuardCallbackBase, BaseCallbackHandler):
    """Sync handler: prompt check at model start, streaming checks, final checks at the end.

    Raises GuardrailViolation (propagated by LangChain: ``raise_error=True``) on BLOCK. Cannot
    hold tokens back; see the module docstring."""

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        state = self._start(run_id, messages)
        if self.check_prompt and state.query.strip():
            self._stop(state, self.guard.check_prompt(state.query))

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        state = self._start_prompts(run_id, prompts)
        if self.check_prompt and state.query.strip():
            self._stop(state, self.guard.check_prompt(state.query))

    def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        state = self._feed(run_id, token, chunk)
        if state is not None and state.runner is not None:
            state.runner.wait(_flushed)
            self._stop(state, state.runner.stop)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        state = self._finish(run_id)
        if state.runner is None:  # not streamed: judge the whole message once
            self._verdicts(state, judge(self.guard.stream_checks(), state.query, self._final_parts(response),
                                        reasoning=self.check_reasoning, response=self.check_response))
            return
        try:
            state.runner.end()
            state.runner.wait(_settled)
        finally:
            state.runner.finish()
        self._stop(state, state.runner.stop)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id, error=True)


class AsyncGuardCallbackHandler(_GuardCallbackBase, AsyncCallbackHandler):
    """Async twin of GuardCallbackHandler for ``ainvoke`` / ``astream`` / ``astream_events``."""

    async def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        state = self._start(run_id, messages)
        if self.check_prompt and state.query.strip():
            self._stop(state, await self.guard.acheck_prompt(state.query))

    async def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        state = self._start_prompts(run_id, prompts)
        if self.check_prompt and state.query.strip():
            self._stop(state, await self.guard.acheck_prompt(state.query))

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        state = self._feed(run_id, token, chunk)
        if state is not None and state.runner is not None:
            await state.runner.wait_async(_flushed)
            self._stop(state, state.runner.stop)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        state = self._finish(run_id)
        if state.runner is None:
            self._verdicts(state, await ajudge(self.guard.stream_checks(), state.query, self._final_parts(response),
                                               reasoning=self.check_reasoning, response=self.check_response))
            return
        try:
            state.runner.end()
            await state.runner.wait_async(_settled)
        finally:
            state.runner.finish()
        self._stop(state, state.runner.stop)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id, error=True)
