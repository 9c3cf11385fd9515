"""GuardedRunnable: any Runnable (a chain or a chat model) with guards on its input and output.

* ``invoke`` / ``ainvoke``: check the input (prompt stage); run; check the output's reasoning and
  answer. REDACT returns the redacted output as the same type (an AIMessage stays an AIMessage
  with the same id); BLOCK returns the refusal (``on_block="refuse"``) or raises
  GuardrailViolation (``on_block="raise"``).
* ``stream`` / ``astream``: pass chunks through while two monitors check the reasoning and the
  answer. Unlike a callback handler, a wrapper can delay chunks, so hold-back is honoured: by
  default the answer is released only after a check has covered it (nothing past a blocking
  prefix ever reaches the caller) and reasoning streams at once (a blocking check stops the
  stream; the tokens released past the blocking prefix are the detection lag, in
  ``guarded.last_stream.reasoning.stats``). At the first answer text the stream waits for the
  reasoning's final check (``gate_answer=True``), so no answer follows an unchecked chain of
  thought. On BLOCK the source stream is closed (the model stops generating) and the stream
  ends with a refusal chunk, or raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.utils import Input, Output

from ..errors import GuardrailViolation
from ..guard import Guard
from ..monitor import ReasoningMonitor
from ..streaming import tool_call_text
from ..types import Action, Decision, Stage
from ._common import META_KEY, decision_meta, prompt_of, rebuild_message, refusal_chunk, split_output

OnBlock = Literal["refuse", "raise"]


@dataclass
class StreamState:
    """What one stream did: its monitors and the decision that ended it, if any."""

    query: str = ""
    reasoning: ReasoningMonitor | None = None
    answer: ReasoningMonitor | None = None
    decision: Decision | None = None  # the blocking (or redacting) decision
    released_reasoning: str = ""
    released_answer: str = ""
    chunks_in: int = 0
    decisions: list[Decision] = field(default_factory=list)
    gated: bool = False  # the reasoning before the answer has had its final check
    held_tools: list[Any] = field(default_factory=list)  # tool-call chunks, held until checked
    tool_text: str = ""
    reasoning_segments: list[ReasoningMonitor] = field(default_factory=list)


class _Shape:
    """Remembers how the source stream carries text so released text goes out the same way."""

    def __init__(self, output_key: str | None = None) -> None:
        self.output_key = output_key
        self.like: Any = None  # the last text-bearing chunk
        self.reasoning_in_blocks = False
        self.reasoning_index: Any = None
        self.text_in_blocks = False
        self.text_index: Any = None

    def learn(self, chunk: Any) -> None:
        self.like = chunk
        content = getattr(chunk, "content", None)
        if isinstance(content, list):
            for b in content:
                if not isinstance(b, dict):
                    continue
                if b.get("type") in ("reasoning", "thinking"):
                    self.reasoning_in_blocks = True
                    self.reasoning_index = b.get("index", self.reasoning_index)
                elif b.get("type") in ("text", "output_text"):
                    self.text_in_blocks = True
                    self.text_index = b.get("index", self.text_index)
            if self.reasoning_in_blocks:
                self.text_in_blocks = True  # block content stays block content

    def reasoning(self, text: str) -> Any:
        like = self.like
        kwargs = {"id": like.id} if isinstance(like, BaseMessage) and like.id else {}
        if self.reasoning_in_blocks:
            block: dict[str, Any] = {"type": "reasoning", "reasoning": text}
            if self.reasoning_index is not None:
                block["index"] = self.reasoning_index
            return AIMessageChunk(content=[block], **kwargs)
        return AIMessageChunk(content="", additional_kwargs={"reasoning_content": text}, **kwargs)

    def answer(self, text: str) -> Any:
        like = self.like
        if isinstance(like, str) or like is None:
            return text
        if isinstance(like, dict):
            key = self.output_key or next((k for k in ("output", "answer", "text") if k in like), "output")
            return {**like, key: text}
        kwargs = {"id": like.id} if isinstance(like, BaseMessage) and like.id else {}
        if self.text_in_blocks:
            block: dict[str, Any] = {"type": "text", "text": text}
            if self.text_index is not None:
                block["index"] = self.text_index
            return AIMessageChunk(content=[block], **kwargs)
        return AIMessageChunk(content=text, **kwargs)


class GuardedRunnable(Runnable[Input, Output]):
    """Wraps ``runnable`` with prompt, reasoning and response checks by ``guard``.

    ``input_key`` / ``output_key`` pick the text of dict inputs / outputs (defaults: the usual
    keys). ``hold_back_answer`` / ``hold_back_reasoning`` override the stage config (defaults:
    answer held, reasoning streamed). ``check_every_tokens`` overrides the monitors' interval.
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
    ):
        if on_block not in ("refuse", "raise"):
            raise ValueError("on_block must be 'refuse' or 'raise'")
        self.runnable = runnable
        self.guard = guard
        self.on_block = on_block
        self.check_prompt = check_prompt
        self.check_reasoning = check_reasoning
        self.check_response = check_response
        self.hold_back_answer = hold_back_answer
        self.hold_back_reasoning = hold_back_reasoning
        self.check_every_tokens = check_every_tokens
        self.gate_answer = gate_answer
        self.input_key = input_key
        self.output_key = output_key
        self._refusal = refusal
        #: the state of the most recent stream (monitors, stats, the blocking decision)
        self.last_stream: StreamState | None = None

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
        query = self._query(input)
        if self.check_prompt:
            d = self._redact_blocks(self.guard.check_prompt(query))
            if d.blocked:
                return self._blocked(d, None)
        out = self.runnable.invoke(input, config, **kwargs)
        reasoning, text = split_output(out, self.output_key)
        rd = self.guard.check_reasoning(query, reasoning) if self.check_reasoning and reasoning else None
        ad = self.guard.check_response(query, text) if self.check_response and text else None
        tools = self._tool_text(out)
        td = self.guard.check_response(query, tools) if tools else None
        return self._apply(out, reasoning, text, rd, ad, td)

    async def ainvoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Output:
        query = self._query(input)
        if self.check_prompt:
            d = self._redact_blocks(await self.guard.acheck_prompt(query))
            if d.blocked:
                return self._blocked(d, None)
        out = await self.runnable.ainvoke(input, config, **kwargs)
        reasoning, text = split_output(out, self.output_key)
        rd = await self.guard.acheck_reasoning(query, reasoning) if self.check_reasoning and reasoning else None
        ad = await self.guard.acheck_response(query, text) if self.check_response and text else None
        tools = self._tool_text(out)
        td = await self.guard.acheck_response(query, tools) if tools else None
        return self._apply(out, reasoning, text, rd, ad, td)

    def _apply(
        self, out: Any, reasoning: str, text: str, rd: Decision | None, ad: Decision | None,
        td: Decision | None = None,
    ) -> Any:
        for d in (rd, ad, self._redact_blocks(td)):
            if d is not None and d.blocked:
                return self._blocked(d, out)  # the refusal carries no tool calls
        new_reasoning = rd.text if rd is not None and rd.action is Action.REDACT else reasoning
        new_text = ad.text if ad is not None and ad.action is Action.REDACT else text
        if new_reasoning == reasoning and new_text == text:
            return out  # untouched: the very same object
        redacting = next(d for d in (ad, rd) if d is not None and d.action is Action.REDACT)
        return self._replace(out, new_reasoning, new_text, redacting)

    def _replace(self, out: Any, reasoning: str, text: str, d: Decision) -> Any:
        if isinstance(out, str):
            return text
        if isinstance(out, BaseMessage):
            msg = rebuild_message(out, reasoning=reasoning or None, text=text)
            meta = {**(msg.response_metadata or {}), META_KEY: decision_meta(d)}
            return msg.model_copy(update={"response_metadata": meta})
        if isinstance(out, dict):
            key = self.output_key or next((k for k in ("output", "answer", "text") if k in out), None)
            if key is not None:
                return {**out, key: self._replace(out[key], reasoning, text, d)}
        return text

    def _blocked(self, d: Decision, out: Any) -> Any:
        if self.on_block == "raise":
            raise GuardrailViolation(d)
        if self._refusal is not None:
            return self._refusal(d)
        meta = {META_KEY: decision_meta(d)}
        if isinstance(out, BaseMessage) or (out is None and self._is_chat_model()):
            kw = {"id": out.id} if isinstance(out, BaseMessage) and out.id else {}
            return AIMessage(content=d.text, response_metadata=meta, **kw)
        if isinstance(out, dict):
            key = self.output_key or next((k for k in ("output", "answer", "text") if k in out), "output")
            return {**out, key: d.text}
        return d.text

    def _redact_blocks(self, d: Decision | None) -> Decision | None:
        """REDACT as a BLOCK, where the text cannot be edited in place: a tool call's arguments
        (JSON), or the caller's input (a wrapper cannot rewrite an arbitrary Runnable input)."""
        if d is not None and d.action is Action.REDACT:
            return d.model_copy(update={"action": Action.BLOCK, "text": self.guard.config.refusal_message})
        return d

    def _tool_text(self, out: Any) -> str:
        """Tool calls of a message output (or chunk), as text: their arguments are model output."""
        if not self.check_response or not isinstance(out, BaseMessage):
            return ""
        return tool_call_text(out).strip()

    def _is_chat_model(self) -> bool:
        r: Any = self.runnable
        while r is not None and not isinstance(r, BaseChatModel):
            # RunnableBinding (bind_tools, with_config) or a chain ending in a chat model
            r = getattr(r, "bound", None) or getattr(r, "last", None)
        return r is not None

    def _query(self, input: Any) -> str:
        q = prompt_of(input, self.input_key)
        if isinstance(q, str):
            return q
        from ..content import normalize_text

        return normalize_text(q, what="prompt").value

    # -- stream -------------------------------------------------------------------------------
    def _new_state(self, query: str) -> StreamState:
        kw = {"check_every_tokens": self.check_every_tokens}
        st = StreamState(
            query=query,
            reasoning=self.guard.reasoning_monitor(query=query, hold_back=self.hold_back_reasoning, **kw),
            answer=self.guard.stream_monitor(Stage.RESPONSE, query=query, hold_back=self.hold_back_answer, **kw),
        )
        self.last_stream = st
        return st

    def _gate_due(self, st: StreamState, chunk: Any) -> bool:
        """True at the first answer text after reasoning that has not had its final check."""
        if not (self.gate_answer and self.check_reasoning and not st.gated):
            return False
        if st.reasoning is None or st.reasoning.stats.tokens_fed == 0:
            return False
        return bool(split_output(chunk, self.output_key)[1])

    def _gated(self, st: StreamState) -> None:
        assert st.reasoning is not None
        st.gated = True
        st.reasoning_segments.append(st.reasoning)

    def _pass(self, st: StreamState, shape: _Shape, chunk: Any) -> tuple[list[Any], Decision | None]:
        """Feed one source chunk; return the chunks to emit now and the blocking decision."""
        assert st.reasoning is not None and st.answer is not None
        st.chunks_in += 1
        reasoning, text = split_output(chunk, self.output_key)
        if not reasoning and not text:
            tools = self._tool_text(chunk)
            if tools:  # tool-call fragments: held until the end-of-stream check of their text
                st.held_tools.append(chunk)
                st.tool_text += tools
                return [], self._stopper(st)
            # No text (usage metadata): nothing to judge. It goes out at once unless the stream
            # has already been stopped.
            return ([] if self._stopper(st) else [chunk]), self._stopper(st)
        shape.learn(chunk)
        if reasoning and self.check_reasoning:
            if st.gated:  # reasoning again after the answer began: a new segment
                st.gated = False
                st.reasoning = self.guard.reasoning_monitor(
                    query=st.query, hold_back=self.hold_back_reasoning, check_every_tokens=self.check_every_tokens
                )
            st.reasoning.feed(reasoning)
        if text and self.check_response:
            st.answer.feed(text)
        stop = self._stopper(st)
        if stop is not None:
            # Stopped: nothing more goes out but the refusal (never more than the monitor
            # counted as released, whichever way the race with the check went).
            return [], stop
        return self._released(st, shape, reasoning, text, chunk), None

    def _stopper(self, st: StreamState) -> Decision | None:
        for mon in (st.reasoning, st.answer):
            if mon is not None and mon.decision is not None:
                return mon.decision
        return None

    def _released(self, st: StreamState, shape: _Shape, reasoning: str, text: str, chunk: Any) -> list[Any]:
        """Chunks for the text the monitors now release (unchecked stages pass straight through)."""
        assert st.reasoning is not None and st.answer is not None
        r_out = st.reasoning.drain() if self.check_reasoning else reasoning
        a_out = st.answer.drain() if self.check_response else text
        st.released_reasoning += r_out
        st.released_answer += a_out
        if chunk is not None and r_out == reasoning and a_out == text:
            return [chunk]  # nothing held: the source chunk itself, metadata and all
        out = []
        if r_out:
            out.append(shape.reasoning(r_out))
        if a_out:
            out.append(shape.answer(a_out))
        return out

    def _end(self, st: StreamState, shape: _Shape, d: Decision) -> list[Any]:
        """The chunks that close a stopped stream (or raise)."""
        st.decision = d
        st.decisions.append(d)
        if self.on_block == "raise":
            raise GuardrailViolation(d)
        if d.action is Action.REDACT and d.stage is Stage.RESPONSE and d.text.startswith(st.released_answer):
            # The redacted answer extends what the caller already has: send the rest of it.
            rest = d.text[len(st.released_answer):]
            return [shape.answer(rest)] if rest else []
        if self._refusal is not None:
            return [self._refusal(d)]
        like = shape.like if shape.like is not None else (AIMessageChunk(content="") if self._is_chat_model() else "")
        return [refusal_chunk(d, like=like)]

    def _finish(self, st: StreamState, shape: _Shape, decisions: list[Decision]) -> list[Any]:
        """After the source ended: release what the final checks cover, or end with a refusal."""
        assert st.reasoning is not None and st.answer is not None
        st.decisions.extend(decisions)
        stop = self._stopper(st) or next((d for d in decisions if d.blocked), None)
        if stop is not None:
            return self._end(st, shape, stop)
        return self._released(st, shape, "", "", None) + st.held_tools

    def stream(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Output]:
        query = self._query(input)
        if self.check_prompt:
            d = self._redact_blocks(self.guard.check_prompt(query))
            if d.blocked:
                st = self._new_state(query)
                yield from self._end(st, _Shape(self.output_key), d)
                return
        st = self._new_state(query)
        shape = _Shape(self.output_key)
        source = self.runnable.stream(input, config, **kwargs)
        finished = False
        try:
            for chunk in source:
                if self._gate_due(st, chunk):
                    assert st.reasoning is not None
                    st.reasoning.close()
                    self._gated(st)
                    if st.reasoning.decision is not None:
                        yield from self._end(st, shape, st.reasoning.decision)
                        return
                out, stop = self._pass(st, shape, chunk)
                yield from out
                if stop is not None:
                    yield from self._end(st, shape, stop)
                    return
            finished = True
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # stops the model when we stop early
            if not finished:  # blocked or abandoned: no end-of-trace checks, free engine state
                _discard(st)
        decisions = []
        if self.check_reasoning:
            decisions.append(st.reasoning.close())  # type: ignore[union-attr]
        if self.check_response:
            decisions.append(st.answer.close())  # type: ignore[union-attr]
        if st.tool_text:
            decisions.append(self._redact_blocks(self.guard.check_response(st.query, st.tool_text)))
        yield from self._finish(st, shape, decisions)

    async def astream(
        self, input: Input, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Output]:
        query = self._query(input)
        if self.check_prompt:
            d = self._redact_blocks(await self.guard.acheck_prompt(query))
            if d.blocked:
                st = self._new_state(query)
                for c in self._end(st, _Shape(self.output_key), d):
                    yield c
                return
        st = self._new_state(query)
        shape = _Shape(self.output_key)
        source = self.runnable.astream(input, config, **kwargs)
        finished = False
        try:
            async for chunk in source:
                if self._gate_due(st, chunk):
                    assert st.reasoning is not None
                    await st.reasoning.aclose()
                    self._gated(st)
                    if st.reasoning.decision is not None:
                        for c in self._end(st, shape, st.reasoning.decision):
                            yield c
                        return
                out, stop = self._pass(st, shape, chunk)
                for c in out:
                    yield c
                if stop is not None:
                    for c in self._end(st, shape, stop):
                        yield c
                    return
            finished = True
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()
            if not finished:
                _discard(st)
        decisions = []
        if self.check_reasoning:
            decisions.append(await st.reasoning.aclose())  # type: ignore[union-attr]
        if self.check_response:
            decisions.append(await st.answer.aclose())  # type: ignore[union-attr]
        if st.tool_text:
            decisions.append(self._redact_blocks(await self.guard.acheck_response(st.query, st.tool_text)))
        for c in self._finish(st, shape, decisions):
            yield c


def _discard(st: StreamState) -> None:
    for mon in {id(m): m for m in (*st.reasoning_segments, st.reasoning, st.answer) if m is not None}.values():
        mon.discard()


def guard_runnable(runnable: Runnable[Any, Any], guard: Guard, **kwargs: Any) -> GuardedRunnable[Any, Any]:
    """``GuardedRunnable(runnable, guard, **kwargs)``."""
    return GuardedRunnable(runnable, guard, **kwargs)


__all__ = ["GuardedRunnable", "StreamState", "guard_runnable"]
