"""Event-safe callbacks: what LangChain's event streams may show of a guarded run.

Why this layer exists. A Runnable's own ``stream()`` is only one way its output leaves. Every
other streaming API (``astream_events`` v1 / v2, ``astream_log``, LangGraph's
``stream_mode="messages"``) is fed by callback handlers in the run's config, and those receive
the inner model's ``on_llm_new_token`` and ``on_llm_end`` / ``on_chain_end`` callbacks directly,
before any wrapper could hold them back (LangChain #35011: "streaming bypasses guardrails"). A
wrapper that only filters its own stream therefore leaks through the events of the runs inside it.

What a guarded call does with its callbacks (``Scope``):

* The wrapper is a run of its own, seen by every handler: its start, the chunks the turn guard
  released (as token events of a chat-model run when it wraps a chat model, else as the stream of
  a chain run), and its checked end. Consumers of event streams see this run in place of the
  model's.
* The inner runnable runs with a child callback manager from which the consumer-facing streaming
  handlers are removed: anything that implements LangChain's ``_StreamingCallbackHandler``
  protocol (the astream_events and astream_log tracers, LangGraph's messages and tool-call
  stream handlers).
* Every other handler (LangSmith's ``LangChainTracer``, a user's handler) still records the inner
  run, through a ``_Gate``: token and protocol events are dropped, end and error events are held
  until the guarded call has its verdict, then replayed as they came (the turn passed) or as
  errors carrying the ``GuardrailViolation`` (the turn was stopped or rewritten), so a trace never
  holds text no check covered. ``trace_unchecked=True`` hands those handlers the inner run as it
  happened instead (opt-in: traces then hold unchecked text).

The gate passes ``isinstance`` checks as the handler it wraps (so LangChain's "is a tracer already
attached?" test does not attach a second, ungated tracer when tracing is on by environment).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, cast
from uuid import UUID

from langchain_core.callbacks.manager import (
    AsyncCallbackManager,
    CallbackManager,
    ahandle_event,
    handle_event,
)
from langchain_core.messages import BaseMessage, BaseMessageChunk, HumanMessage, message_chunk_to_message
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    patch_config,
)
from langchain_core.tracers._streaming import _StreamingCallbackHandler

from ..errors import GuardrailViolation

#: callbacks that carry model text as it is generated: a gated handler never gets them
_DROPPED = frozenset({"on_llm_new_token", "on_stream_event"})


def is_streaming(handler: Any) -> bool:
    """True for the handlers that hand a run's output to a consumer as it streams."""
    return isinstance(handler, _StreamingCallbackHandler)


class _Hold:
    """The end and error callbacks of one guarded call's inner runs, held until its verdict."""

    def __init__(self) -> None:
        self._events: list[tuple[Any, str, tuple[Any, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def add(self, handler: Any, name: str, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._events.append((handler, name, args, kwargs))

    def _take(self, error: BaseException | None) -> list[tuple[Any, str, tuple[Any, ...], dict[str, Any]]]:
        with self._lock:
            events, self._events = self._events, []
        if error is None:
            return events
        # a stopped or rewritten turn: its inner runs end as errors, without the output they had
        return [(h, name.rsplit("_", 1)[0] + "_error", (error,), {k: v for k, v in kw.items() if k != "response"})
                for h, name, _args, kw in events]

    def replay(self, error: BaseException | None = None) -> None:
        for handler, name, args, kwargs in self._take(error):
            handle_event([handler], name, None, *args, **kwargs)

    async def areplay(self, error: BaseException | None = None) -> None:
        for handler, name, args, kwargs in self._take(error):
            await ahandle_event([handler], name, None, *args, **kwargs)


class _Gate:
    """A handler seen through a guarded call: no token events, end events held (``_Hold``)."""

    def __init__(self, inner: Any, hold: _Hold):
        self._inner = inner
        self._hold = hold

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105 (isinstance sees the wrapped handler, see the module docstring)
        return type(self._inner)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in _DROPPED:
            return _ignore
        if name.startswith("on_") and (name.endswith("_end") or name.endswith("_error")):
            def held(*args: Any, **kwargs: Any) -> None:
                self._hold.add(self._inner, name, *args, **kwargs)
            return held
        return attr


def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


class Scope:
    """The callbacks of one guarded call: the wrapper's own run and the inner run's config.

    ``chat``: the wrapper's run is a chat-model run (token events carry the released chunks), else
    a chain run (its stream is tapped by the streaming handlers, as LangChain's own runnables do).
    """

    def __init__(self, config: RunnableConfig | None, *, name: str, chat: bool, is_async: bool,
                 trace_unchecked: bool = False):
        self.config = ensure_config(config)
        self.name = self.config.get("run_name") or name
        self.chat = chat
        self.is_async = is_async
        self.trace_unchecked = trace_unchecked
        self.run_id: UUID | None = self.config.get("run_id")
        get = get_async_callback_manager_for_config if is_async else get_callback_manager_for_config
        self.manager = get(self.config)
        self.run: Any = None
        self.hold = _Hold()
        self._chunks: list[Any] = []
        #: the decision that stopped the call's stream (set by the wrapper), None while it passes
        self.stop: Any = None

    @property
    def wants_tokens(self) -> bool:
        """True when a handler hands this run's output to a consumer as it streams."""
        return any(is_streaming(h) for h in self.manager.handlers)

    # -- the wrapper's run ---------------------------------------------------------------------------
    def _start_args(self, input: Any, messages: Sequence[BaseMessage] | None) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        serialized = {"lc": 1, "type": "not_implemented", "id": ["guardrails_plugin", "GuardedRunnable"], "name": self.name}
        kw = {"run_id": self.run_id, "name": self.name}
        if self.chat:
            msgs = list(messages) if messages is not None else [HumanMessage(str(input))]
            return "on_chat_model_start", (serialized, [msgs]), kw
        return "on_chain_start", (serialized, input), kw

    def start(self, input: Any, messages: Sequence[BaseMessage] | None = None) -> None:
        method, args, kw = self._start_args(input, messages)
        run = getattr(self.manager, method)(*args, **kw)
        self.run = run[0] if isinstance(run, list) else run

    async def astart(self, input: Any, messages: Sequence[BaseMessage] | None = None) -> None:
        method, args, kw = self._start_args(input, messages)
        run = await getattr(self.manager, method)(*args, **kw)
        self.run = run[0] if isinstance(run, list) else run

    def child_config(self) -> RunnableConfig:
        """The inner runnable's config: streaming handlers removed, the others gated."""
        # what ParentRunManager.get_child does (a chat-model run manager has no children of its own)
        child = (AsyncCallbackManager if self.is_async else CallbackManager)(handlers=[], parent_run_id=self.run.run_id)
        for h in self.run.inheritable_handlers:
            if not is_streaming(h):
                child.add_handler(h if self.trace_unchecked else cast("Any", _Gate(h, self.hold)), inherit=True)
        child.add_tags(self.run.inheritable_tags)
        child.add_metadata(self.run.inheritable_metadata)
        return patch_config(self.config, callbacks=child)

    def _token_args(self, chunk: Any) -> tuple[str, dict[str, Any]] | None:
        self._chunks.append(chunk)
        if not self.chat or not isinstance(chunk, BaseMessageChunk):
            return None
        return chunk.text, {"chunk": ChatGenerationChunk(message=chunk)}

    def token(self, chunk: Any) -> None:
        args = self._token_args(chunk)
        if args is not None:
            self.run.on_llm_new_token(args[0], **args[1])

    async def atoken(self, chunk: Any) -> None:
        args = self._token_args(chunk)
        if args is not None:
            await self.run.on_llm_new_token(args[0], **args[1])

    def tap(self, items: Iterator[Any]) -> Iterator[Any]:
        """A chain run's stream, handed to the streaming handlers (their ``on_chain_stream``)."""
        if not self.chat:
            for h in self.run.handlers:
                if is_streaming(h):
                    items = h.tap_output_iter(self.run.run_id, items)
        return items

    def atap(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        if not self.chat:
            for h in self.run.handlers:
                if is_streaming(h):
                    items = h.tap_output_aiter(self.run.run_id, items)
        return items

    def streamed_output(self) -> Any:
        """The chunks released so far, added up (a message for message chunks)."""
        out: Any = None
        for c in self._chunks:
            try:
                out = c if out is None else out + c
            except TypeError:
                out = c
        return message_chunk_to_message(out) if isinstance(out, BaseMessageChunk) else out

    def _end_args(self, output: Any) -> tuple[str, Any]:
        if self.chat:
            msg = output if isinstance(output, BaseMessage) else None
            gens = [[ChatGeneration(message=msg)]] if msg is not None else []
            return "on_llm_end", LLMResult(generations=gens)
        return "on_chain_end", output

    def end(self, output: Any, verdict: BaseException | None = None) -> None:
        """Replay the inner runs' held ends (as errors when ``verdict`` is set), then end this run."""
        self.hold.replay(verdict)
        method, arg = self._end_args(output)
        getattr(self.run, method)(arg)

    async def aend(self, output: Any, verdict: BaseException | None = None) -> None:
        await self.hold.areplay(verdict)
        method, arg = self._end_args(output)
        await getattr(self.run, method)(arg)

    def error(self, exc: BaseException) -> None:
        self.hold.replay(exc)
        if self.run is not None:
            (self.run.on_llm_error if self.chat else self.run.on_chain_error)(exc)

    async def aerror(self, exc: BaseException) -> None:
        await self.hold.areplay(exc)
        if self.run is not None:
            await (self.run.on_llm_error if self.chat else self.run.on_chain_error)(exc)


def violation(d: Any) -> GuardrailViolation | None:
    """The error a stopped or rewritten turn's inner runs end with (None: they passed)."""
    return GuardrailViolation(d) if d is not None else None


__all__ = ["Scope", "is_streaming", "violation"]
