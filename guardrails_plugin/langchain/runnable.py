"""GuardedRunnable: any Runnable (a chain or a chat model) with guards on its input and output.

* ``invoke`` / ``ainvoke``: check the input (prompt stage); run; check the output's reasoning and
  answer (with its tool calls). REDACT returns the redacted output as the same type (an
  AIMessage stays an AIMessage with the same id); BLOCK returns the refusal
  (``on_block="refuse"``) or raises GuardrailViolation (``on_block="raise"``).
* ``stream`` / ``astream``: chunks go through the turn guard (``guardrails_plugin.stream``).
  Unlike a callback handler, a wrapper can delay chunks, so hold-back is honoured: by default the
  answer is released only after a check has covered it (nothing past a blocking prefix ever
  reaches the caller), reasoning streams at once (a blocking check stops the stream; the tokens
  released past the blocking prefix are the detection lag, ``last_stream.stats(Stage.REASONING)``),
  the answer waits for the reasoning's final check (``gate_answer=True``) and tool-call chunks
  leave only with a clean turn. On a stop the source stream is closed (the model stops
  generating) and the stream ends with a refusal chunk, or raises.
* Event streams (``astream_events`` v1 / v2, ``astream_log``, LangGraph's ``stream_mode="messages"``)
  see the wrapper as a run of its own carrying only released chunks and the checked output; the
  inner runs are hidden from them, and other handlers (tracers) see the inner runs with checked
  content only unless ``trace_unchecked=True`` (events.py says how and why). An ``invoke`` whose
  run someone streams (an event stream, an agent's messages mode) streams through the turn guard.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.utils import Input, Output

from ..content import normalize_text
from ..errors import GuardrailViolation
from ..guard import Guard
from ..stream import TurnGuard, TurnRunner, Verdicts, adrive, ajudge, drive, judge
from ..stream.drive import split
from ..types import Action, Decision, Stage
from ._common import (
    OUTPUT_KEYS,
    marked,
    output_parts,
    prompt_of,
    rebuild_message,
    refusal_message,
    text_chunk,
)
from .events import Scope, violation

OnBlock = Literal["refuse", "raise"]


class GuardedRunnable(Runnable[Input, Output]):
    """Wraps ``runnable`` with prompt, reasoning and response checks by ``guard``.

    ``input_key`` / ``output_key`` pick the text of dict inputs / outputs (defaults: the usual
    keys). ``hold_back_answer`` / ``hold_back_reasoning`` override the stage config (defaults:
    answer held, reasoning streamed). ``check_every_tokens`` overrides the checks' interval.
    ``trace_unchecked=True`` lets tracers (LangSmith, user callback handlers) record the inner run
    as it happened, unchecked text included (off: they get checked content only; events.py).
    """

    def __init__(
        self,
        runnable: Runnable[Input, Output],
        guard: Guard,
        *,
        on_block: OnBlock = "refuse",
        check_prompt: bool = True,
        check_reasoning: bool = True,
        check_response: bool = True,
        hold_back_answer: bool | None = None,
        hold_back_reasoning: bool | None = None,
        check_every_tokens: int | None = None,
        gate_answer: bool = True,
        input_key: str | None = None,
        output_key: str | None = None,
        refusal: Callable[[Decision], Any] | None = None,
        trace_unchecked: bool = False,
    ):
        if on_block not in ("refuse", "raise"):
            raise ValueError("on_block must be 'refuse' or 'raise'")
        self.runnable = runnable
        self.guard = guard
        self.on_block = on_block
        self.check_prompt = check_prompt
        self.check_reasoning = check_reasoning
        self.check_response = check_response
        self.input_key = input_key
        self.output_key = output_key
        self._refusal = refusal
        self.trace_unchecked = trace_unchecked
        self._turn_kw = dict(hold_back_answer=hold_back_answer, hold_back_reasoning=hold_back_reasoning,
                             check_every_tokens=check_every_tokens, gate_answer=gate_answer,
                             reasoning=check_reasoning, response=check_response)
        #: the TurnGuard of the most recent stream (tracks, stats, ``stop``: the decision that ended it)
        self.last_stream: TurnGuard | None = None
        #: the verdicts of the most recent call judged whole (``invoke`` nobody streams)
        self.last_verdicts: Verdicts | None = None
        #: called with each new TurnGuard (GuardMiddleware reads its stats through it)
        self.on_turn: Callable[[TurnGuard], None] | None = None
        #: the copies ``bind_tools`` made (their ``last_*`` are the calls made through them)
        self.bound_copies: list[GuardedRunnable[Any, Any]] = []

    def bind_tools(self, tools: Any, **kwargs: Any) -> GuardedRunnable[Any, Any]:
        """The same guard around ``runnable.bind_tools(tools, **kwargs)``."""
        return self.with_runnable(self.runnable.bind_tools(tools, **kwargs))  # type: ignore[attr-defined]

    def with_runnable(self, runnable: Runnable[Any, Any]) -> GuardedRunnable[Any, Any]:
        """A copy of this wrapper (same guard and settings) around ``runnable``."""
        new = copy.copy(self)
        new.runnable, new.last_stream, new.last_verdicts = runnable, None, None
        self.bound_copies.append(new)
        return new

    @property
    def InputType(self) -> Any:  # noqa: N802 (LangChain's name)
        return self.runnable.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return self.runnable.OutputType

    def __repr__(self) -> str:
        return f"GuardedRunnable({self.runnable!r})"

    # -- invoke -------------------------------------------------------------------------------
    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        scope = self._scope(config, input, is_async=False)
        verdict: Decision | None
        try:
            scope.start(input, self._messages(input))
            query = self._query(input)
            if self.check_prompt and (d := self._prompt_stop(self.guard.check_prompt(query))):
                out, verdict = self._blocked(d, None), d
            elif scope.wants_tokens:  # someone streams this run: stream it through the turn guard
                for chunk in self._stream(scope, input, query, **kwargs):
                    scope.token(chunk)
                out, verdict = self._streamed_result(scope)
            else:
                out = self.runnable.invoke(input, scope.child_config(), **kwargs)
                v = judge(self.guard.stream_checks(), query, output_parts(out, self.output_key),
                          reasoning=self.check_reasoning, response=self.check_response)
                self.last_verdicts = v
                out, verdict = self._apply(out, v), v.stop or v.answer or v.reasoning
        except BaseException as exc:
            scope.error(exc)
            raise
        scope.end(out, violation(verdict))
        return out  # type: ignore[no-any-return]

    async def ainvoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        scope = self._scope(config, input, is_async=True)
        verdict: Decision | None
        try:
            await scope.astart(input, self._messages(input))
            query = self._query(input)
            if self.check_prompt and (d := self._prompt_stop(await self.guard.acheck_prompt(query))):
                out, verdict = self._blocked(d, None), d
            elif scope.wants_tokens:
                async for chunk in self._astream(scope, input, query, **kwargs):
                    await scope.atoken(chunk)
                out, verdict = self._streamed_result(scope)
            else:
                out = await self.runnable.ainvoke(input, scope.child_config(), **kwargs)
                v = await ajudge(self.guard.stream_checks(), query, output_parts(out, self.output_key),
                                 reasoning=self.check_reasoning, response=self.check_response)
                self.last_verdicts = v
                out, verdict = self._apply(out, v), v.stop or v.answer or v.reasoning
        except BaseException as exc:
            await scope.aerror(exc)
            raise
        await scope.aend(out, violation(verdict))
        return out  # type: ignore[no-any-return]

    def _streamed_result(self, scope: Scope) -> tuple[Any, Decision | None]:
        """What an invoke that streamed returns: the released output, or the refusal / redaction."""
        out, d = scope.streamed_output(), scope.stop
        if d is None:
            self.last_verdicts = None
            return out, None
        if d.action is Action.REDACT and isinstance(out, BaseMessage) and self.on_block != "raise":
            reasoning = self.last_stream.released_text(Stage.REASONING) if self.last_stream else ""
            return marked(rebuild_message(out, reasoning=reasoning or None, text=d.text), d), d
        return self._blocked(d, out), d

    def _apply(self, out: Any, v: Verdicts) -> Any:
        if v.stop is not None:
            return self._blocked(v.stop, out)  # the refusal carries no tool calls
        if v.reasoning is None and v.answer is None:
            return out  # untouched: the very same object
        reasoning, text, _, _ = split(output_parts(out, self.output_key))
        return self._replace(out, v.reasoning.text if v.reasoning else reasoning,
                             v.answer.text if v.answer else text, v.answer or v.reasoning)  # type: ignore[arg-type]

    def _replace(self, out: Any, reasoning: str, text: str, d: Decision) -> Any:
        if isinstance(out, BaseMessage):
            return marked(rebuild_message(out, reasoning=reasoning or None, text=text), d)
        if isinstance(out, dict):
            key = self.output_key or next((k for k in OUTPUT_KEYS if k in out), None)
            if key is not None:
                return {**out, key: self._replace(out[key], reasoning, text, d)}
        return text

    def _blocked(self, d: Decision, out: Any) -> Any:
        if self.on_block == "raise":
            raise GuardrailViolation(d)
        if self._refusal is not None:
            return self._refusal(d)
        if isinstance(out, BaseMessage) or (out is None and self._is_chat_model()):
            return refusal_message(d, like=out if isinstance(out, BaseMessage) else None)
        return text_chunk(d.text, out if isinstance(out, dict) else "", self.output_key)

    def _prompt_stop(self, d: Decision) -> Decision | None:
        """The decision that stops before the model runs. A wrapper cannot rewrite an arbitrary
        Runnable input, so a prompt REDACT blocks."""
        if d.action is Action.REDACT:
            return d.model_copy(update={"action": Action.BLOCK, "text": self.guard.config.refusal_message})
        return d if d.blocked else None

    def _is_chat_model(self) -> bool:
        return self._chat_model() is not None

    def _chat_model(self) -> BaseChatModel | None:
        r: Any = self.runnable
        while r is not None and not isinstance(r, BaseChatModel):
            # RunnableBinding (bind_tools, with_config) or a chain ending in a chat model
            r = getattr(r, "bound", None) or getattr(r, "last", None)
        return r

    def _messages(self, input: Any) -> list[BaseMessage]:
        """The messages the wrapper's chat-model run starts with (event streams show them)."""
        model = self._chat_model()
        try:
            return model._convert_input(input).to_messages() if model is not None else []  # noqa: SLF001
        except Exception:  # a chain ending in a chat model takes other input
            return [HumanMessage(self._query(input))]

    def _scope(self, config: RunnableConfig | None, input: Any, *, is_async: bool) -> Scope:
        return Scope(config, name=getattr(self, "name", None) or self.runnable.get_name(), chat=self._is_chat_model(),
                     is_async=is_async, trace_unchecked=self.trace_unchecked)

    def _query(self, input: Any) -> str:
        q = prompt_of(input, self.input_key)
        return q if isinstance(q, str) else normalize_text(q, what="prompt").value

    # -- stream -------------------------------------------------------------------------------
    def _runner(self, query: str, local: bool) -> TurnRunner:
        runner = TurnRunner.of(self.guard.stream_checks(), query, local=local, **self._turn_kw)
        self.last_stream = runner.turn
        if self.on_turn is not None:
            self.on_turn(runner.turn)
        return runner

    def _parts(self, chunk: Any) -> list[Any]:
        return output_parts(chunk, self.output_key)

    def _end(self, turn: TurnGuard | None, d: Decision) -> Any:
        """The chunk that closes a stopped stream (or raise)."""
        if self.on_block == "raise":
            raise GuardrailViolation(d)
        released = turn.released_text(Stage.RESPONSE) if turn is not None else ""
        like = turn.last_item if turn is not None and turn.last_item is not None else (
            AIMessageChunk(content="") if self._is_chat_model() else "")
        if d.action is Action.REDACT and d.stage is Stage.RESPONSE and d.text.startswith(released):
            return text_chunk(d.text[len(released):], like, self.output_key)  # the rest of the redaction
        if self._refusal is not None:
            return self._refusal(d)
        return text_chunk(d.text, like, self.output_key, decision=d)

    def stream(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Output]:
        scope = self._scope(config, input, is_async=False)
        try:
            scope.start(input, self._messages(input))
            for chunk in scope.tap(self._stream(scope, input, self._query(input), **kwargs)):
                scope.token(chunk)
                yield chunk
        except BaseException as exc:
            scope.error(exc)
            raise
        scope.end(scope.streamed_output(), violation(scope.stop))

    async def astream(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Output]:
        scope = self._scope(config, input, is_async=True)
        try:
            await scope.astart(input, self._messages(input))
            async for chunk in scope.atap(self._astream(scope, input, self._query(input), **kwargs)):
                await scope.atoken(chunk)
                yield chunk
        except BaseException as exc:
            await scope.aerror(exc)
            raise
        await scope.aend(scope.streamed_output(), violation(scope.stop))

    def _stream(self, scope: Scope, input: Any, query: str, **kwargs: Any) -> Iterator[Any]:
        """The released chunks of the inner stream, then the refusal chunk on a stop."""
        if self.check_prompt and (d := self._prompt_stop(self.guard.check_prompt(query))):
            scope.stop = d
            yield self._end(None, d)
            return
        runner = self._runner(query, local=False)
        yield from drive(runner, self.runnable.stream(input, scope.child_config(), **kwargs), self._parts)
        if runner.stop is not None:
            scope.stop = runner.stop
            yield self._end(runner.turn, runner.stop)

    async def _astream(self, scope: Scope, input: Any, query: str, **kwargs: Any) -> AsyncIterator[Any]:
        if self.check_prompt and (d := self._prompt_stop(await self.guard.acheck_prompt(query))):
            scope.stop = d
            yield self._end(None, d)
            return
        runner = self._runner(query, local=True)
        async for chunk in adrive(runner, self.runnable.astream(input, scope.child_config(), **kwargs), self._parts):
            yield chunk
        if runner.stop is not None:
            scope.stop = runner.stop
            yield self._end(runner.turn, runner.stop)


def guard_runnable(runnable: Runnable[Any, Any], guard: Guard, **kwargs: Any) -> GuardedRunnable[Any, Any]:
    """``GuardedRunnable(runnable, guard, **kwargs)``."""
    return GuardedRunnable(runnable, guard, **kwargs)


__all__ = ["GuardedRunnable", "guard_runnable"]
