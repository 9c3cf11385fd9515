"""GuardMiddleware's v3 stream transformer: what a reader of ``stream_events`` /
``astream_events(version="v3")`` (raw events, ``run.messages``, ``run.values``) may see.

LangChain registers it when the agent is built (``AgentMiddleware.transformers``); LangGraph runs
it on every event before the built-in transformers (``before_builtins``) and awaits it
(``aprocess``) before the event goes on, so it can hold text back. It only translates: v3 events
become parts for a TurnGuard (stream/turn.py, one per model message), and each event carries on
what the TurnGuard releases:

* ``content-block-delta``: its text is replaced by the text of its block released so far (answer
  text is held until a check covers it; reasoning streams and is cut on a stop, its detection
  lag in ``GuardMiddleware.last_stream``). Tool-call deltas are withheld: a tool call appears
  whole, on its ``content-block-finish``, only when the whole turn passed.
* the first ``content-block-finish`` (LangChain's bridge finishes every block at the end of the
  message): the turn ends, its final checks are awaited, and each finished block carries exactly
  the released text (plus the refusal, on a stop). ``message-finish`` drops unreleased reasoning
  from ``additional_kwargs``.
* a whole message from the model node (a model that does not stream, or a ``tasks`` result the
  stream did not cover) is judged before it goes on; a refused or redacted one is replaced, in
  ``messages`` events and in the state snapshots (``values``, ``updates``, ``tasks``,
  ``checkpoints``, ``debug``), so no snapshot shows what the stream withheld.

The verdicts are handed to the middleware, whose ``after_model`` reuses them for the same message
instead of checking it twice. Events of other nodes and namespaces pass untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langgraph.stream import ProtocolEvent, StreamTransformer

from ..stream import Part, PartKind, TurnGuard, TurnRunner, Verdicts, ajudge, judge, parts_of
from ..stream.drive import split
from ..types import Decision, Stage
from ._common import META_KEY, GuardHost, is_guard_message, query_of, rebuild_message, refusal_message

MODEL_NODE = "model"  # create_agent's model node
_STATE_METHODS = ("values", "updates", "tasks", "checkpoints", "debug")
_TOOL_BLOCKS = ("tool_call", "tool_call_chunk", "invalid_tool_call", "server_tool_call", "server_tool_call_chunk")
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_TEXT_FIELD = {"text-delta": ("text", PartKind.ANSWER), "reasoning-delta": ("reasoning", PartKind.REASONING)}


@dataclass
class StreamedTurn:
    """What a v3 stream concluded about one model message (for ``after_model``)."""

    message_id: str
    query: str
    reasoning: str
    answer: str
    tools: bool
    stages: dict[str, bool]
    verdicts: Verdicts
    #: every stage's whole text was judged (a stop by an end-of-text check, not by a prefix's)
    complete: bool = True

    @property
    def stop(self) -> Decision | None:
        return self.verdicts.stop

    @property
    def decisions(self) -> dict[Stage, Decision]:
        return self.verdicts.decisions

    def matches(self, query: str, parts: list[Part], stages: dict[str, bool]) -> bool:
        """True when ``parts`` are the very text this stream judged, with the same query."""
        r, a, t, unknown = split(parts)
        return (not unknown and stages == self.stages and query == self.query and r == self.reasoning
                and a == self.answer and bool(t) == self.tools)


def transformer_factory(mw: GuardHost) -> Callable[[tuple[str, ...]], StreamTransformer]:
    """The factory LangGraph calls once per stream (and per subgraph scope)."""

    def factory(scope: tuple[str, ...] = ()) -> StreamTransformer:
        return GuardStreamTransformer(scope, mw)

    return factory


@dataclass
class _Settle:  # wait until the turn's verdicts are in
    live: _Live


@dataclass
class _Judge:  # check a whole message
    msg: AIMessage
    query: str


Steps = Generator[Any, Any, bool]


@dataclass
class _Live:
    """One model message streaming through the transformer."""

    runner: TurnRunner
    message_id: str
    query: str
    kinds: dict[int, str] = field(default_factory=dict)  #: block index -> "tool" for tool blocks
    emitted: dict[int, str] = field(default_factory=dict)  #: released text per block, all told
    pending: dict[int, str] = field(default_factory=dict)  #: released, not yet on the wire
    fed: dict[PartKind, list[str]] = field(default_factory=lambda: {k: [] for k in PartKind})
    tool_args: dict[int, str] = field(default_factory=dict)  #: snapshot args (block-delta)
    named: set[int] = field(default_factory=set)  #: tool blocks whose name was fed
    ended: bool = False
    refused: bool = False
    clean_end: bool = False  #: the turn ended before any stop: every part reached the TurnGuard

    @property
    def turn(self) -> TurnGuard:
        return self.runner.turn

    def feed(self, index: int, fieldname: str, kind: PartKind, text: str) -> None:
        self.fed[kind].append(text)
        self.runner.feed((index, fieldname, text), [Part(kind, text)])
        self.take_released()

    def take_released(self) -> None:
        for index, fieldname, text in self.runner.release():
            if fieldname != "tool":  # tool calls leave whole, on their block's finish
                self.pending[index] = self.pending.get(index, "") + text
                self.emitted[index] = self.emitted.get(index, "") + text

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.clean_end = self.turn.stop is None
            self.runner.end()

    def complete(self) -> bool:
        """Every stage's whole text was judged: stopped tracks by a check of all their text."""
        return self.clean_end and all(
            (t.abort_offset == t.tokens) if t.decision is not None else t.covered >= t.chars for t in self.turn.tracks)

    def passed(self) -> bool:
        t = self.turn
        return t.stop is None and t.settled and all(tr.covered >= tr.chars for tr in t.tracks)


class GuardStreamTransformer(StreamTransformer):
    """See the module docstring."""

    before_builtins = True  # text must be held before MessagesTransformer snapshots it
    supports_sync = True  # aprocess awaits checks; process waits for them on the sync lane
    required_stream_modes = ("messages", "tasks", "values")

    def __init__(self, scope: tuple[str, ...], mw: GuardHost):
        super().__init__(scope)
        self.mw = mw
        self._scope = list(scope)
        self._live: dict[str, _Live] = {}  # by the model call's run id
        self._replaced: dict[str, BaseMessage] = {}  # message id -> what the wire shows instead
        self._seen: set[str] = set()  # message ids judged in this run
        self._query = ""
        self._async = False
        self._first_values = True
        self._resumed: str | None = None  # id of a model message held over from a paused run
        self._resumed_task: str | None = None

    def init(self) -> dict[str, Any]:
        return {}

    def _on_register(self, mux: Any) -> None:
        self._async = bool(getattr(mux, "is_async", False))

    # -- the two lanes: the same steps, waits done blocking or awaited ---------------------------
    def process(self, event: ProtocolEvent) -> bool:
        steps = self._steps(cast("dict[str, Any]", event))
        try:
            op = next(steps)
            while True:
                if isinstance(op, _Settle):
                    op.live.runner.wait(lambda t: t.settled)
                    op = steps.send(None)
                else:
                    op = steps.send(judge(self.mw.guard.stream_checks(), op.query, parts_of(op.msg), **self._kw()))
        except StopIteration as stop:
            return bool(stop.value)

    async def aprocess(self, event: ProtocolEvent) -> bool:
        steps = self._steps(cast("dict[str, Any]", event))
        try:
            op = next(steps)
            while True:
                if isinstance(op, _Settle):
                    await op.live.runner.wait_async(lambda t: t.settled)
                    op = steps.send(None)
                else:
                    v = await ajudge(self.mw.guard.stream_checks(), op.query, parts_of(op.msg), **self._kw())
                    op = steps.send(v)
        except StopIteration as stop:
            return bool(stop.value)

    def _kw(self) -> dict[str, Any]:
        return {**self.mw._stages(), "metadata": {}}

    def finalize(self) -> None:
        for live in self._live.values():
            live.runner.finish()
        self._live.clear()

    def fail(self, err: BaseException) -> None:
        self.finalize()

    # -- events -----------------------------------------------------------------------------------
    def _steps(self, event: dict[str, Any]) -> Steps:
        params = event.get("params") or {}
        if params.get("namespace") != self._scope:
            return True
        method, data = event.get("method"), params.get("data")
        if method == "values" and self._first_values:
            self._first_values = False
            self._hold_resumed(data)
        if method == "tasks" and self._resumed is not None and isinstance(data, dict):
            self._release_resumed(data)
        if method == "messages" and isinstance(data, tuple) and len(data) == 2:
            return (yield from self._message_event(params, *data))
        if method == "tasks" and isinstance(data, dict) and data.get("name") == MODEL_NODE:
            if isinstance(data.get("input"), dict) and "messages" in data["input"]:
                self._query = query_of(data["input"]["messages"])
            result = data.get("result")
            for msg in _ai_messages(result.get("messages", []) if isinstance(result, dict) else []):
                yield from self._judge_whole(msg)
        if method in _STATE_METHODS and self._replaced:
            params["data"] = self._scrub(data)
        return True

    def _message_event(self, params: dict[str, Any], payload: Any, metadata: Any) -> Steps:
        meta = metadata if isinstance(metadata, dict) else {}
        if meta.get("langgraph_node") != MODEL_NODE:
            return True
        if isinstance(payload, AIMessage) and not isinstance(payload, AIMessageChunk):
            yield from self._judge_whole(payload)
            if payload.id in self._replaced:
                params["data"] = (self._replaced[payload.id], metadata)
            return True
        if not isinstance(payload, dict):
            return True
        kind, run_id = payload.get("event"), str(meta.get("run_id") or "")
        if kind == "message-start":
            self._start(run_id, payload, meta)
            return True
        live = self._live.get(run_id)
        if live is None:
            return True
        if kind == "content-block-start":
            return self._block_start(live, payload)
        if kind == "content-block-delta":
            return self._delta(live, payload)
        if kind in ("content-block-finish", "message-finish") and not live.ended:
            live.end()
            yield _Settle(live)
            live.take_released()
        if kind == "content-block-finish":
            return self._block_finish(live, payload)
        if kind == "message-finish":
            self._message_finish(live, payload)
        if kind in ("message-finish", "error"):
            self._close(run_id)
        return True

    def _start(self, run_id: str, payload: dict[str, Any], meta: dict[str, Any]) -> None:
        thread = meta.get("thread_id")
        runner = TurnRunner.of(self.mw.guard.stream_checks(), self._query, local=self._async,
                               metadata={"langgraph": {"thread_id": thread}} if thread else None,
                               reasoning=self.mw.check_reasoning, response=self.mw.check_response)
        message_id = str(payload.get("id") or payload.get("message_id") or f"lc_run--{run_id}")
        self._live[run_id] = _Live(runner, message_id, self._query)
        self.mw.last_stream = runner.turn

    def _block_start(self, live: _Live, payload: dict[str, Any]) -> bool:
        content, index = payload.get("content"), payload.get("index")
        ctype = content.get("type") if isinstance(content, dict) else None
        if ctype in _TOOL_BLOCKS and isinstance(index, int):
            live.kinds[index] = "tool"
            text = _tool_text(live, index, "block-delta", content.get("args"), content.get("name"))  # type: ignore[union-attr]
            if text:
                live.feed(index, "tool", PartKind.TOOL_CALL, text)
            return _withhold(payload)  # the call is shown whole at its finish, if the turn passes
        for fname, kind in (("text", PartKind.ANSWER), ("reasoning", PartKind.REASONING)):
            if isinstance(content, dict) and isinstance(content.get(fname), str) and content[fname]:
                live.feed(index if isinstance(index, int) else -1, fname, kind, content[fname])
                content[fname] = ""
        return True

    def _delta(self, live: _Live, payload: dict[str, Any]) -> bool:
        delta, index = payload.get("delta"), payload.get("index")
        index = index if isinstance(index, int) else -1
        if not isinstance(delta, dict):
            return True  # nothing to read
        dtype = delta.get("type")
        if dtype in _TEXT_FIELD:
            fname, kind = _TEXT_FIELD[dtype]
            text = delta.get(fname)
            if isinstance(text, str) and text:
                live.feed(index, fname, kind, text)
            delta[fname] = live.pending.pop(index, "")
            return bool(delta[fname])
        if dtype == "data-delta":
            return True  # binary payloads: not text a guard reads
        fields = _tool_fields(delta)
        if dtype == "tool-call-delta" or (dtype in ("block-delta", "legacy-block-delta") and fields):
            live.kinds[index] = "tool"
            args = delta.get("args") if fields is None else fields.get("args")
            name = None if fields is None else fields.get("name")
            text = _tool_text(live, index, str(dtype), args, name)
            if text:
                live.feed(index, "tool", PartKind.TOOL_CALL, text)
            return _withhold(payload)
        if dtype in ("block-delta", "legacy-block-delta"):
            return True  # other blocks (server tools, vendor blocks): no text of the model's own
        # a delta type this guard cannot read: the reasoning stage's fail mode decides
        live.runner.feed((index, "unknown", ""), [Part(PartKind.UNKNOWN, f"v3 delta of type {dtype!r}")])
        return _withhold(payload)

    def _block_finish(self, live: _Live, payload: dict[str, Any]) -> bool:
        content, index = payload.get("content"), payload.get("index")
        ctype = content.get("type") if isinstance(content, dict) else None
        stop = live.turn.stop
        if ctype in _TOOL_BLOCKS:
            return True if stop is None else _withhold(payload)
        if ctype in ("text", "reasoning") and isinstance(content, dict):
            shown = live.emitted.get(index, "") if isinstance(index, int) else ""
            if isinstance(index, int):
                live.pending.pop(index, None)  # the finish carries it
            if ctype == "text" and stop is not None and not live.refused:
                shown, live.refused = shown + stop.text, True
            content[ctype] = shown
        return True

    def _message_finish(self, live: _Live, payload: dict[str, Any]) -> None:
        extra = payload.get("additional_kwargs")
        if isinstance(extra, dict) and live.turn.stop is not None:
            released = live.turn.released_text(Stage.REASONING)
            for key in _REASONING_KEYS:
                if key in extra:
                    extra[key] = released if isinstance(extra[key], str) else None
        if live.passed() or live.turn.stop is not None:
            self._remember(live.message_id, live.query, "".join(live.fed[PartKind.REASONING]),
                           "".join(live.fed[PartKind.ANSWER]), bool(live.fed[PartKind.TOOL_CALL]),
                           _verdicts(live.turn), live.complete())
        if live.turn.stop is not None:
            self._replaced[live.message_id] = refusal_message(live.turn.stop, like=AIMessage("", id=live.message_id))

    def _close(self, run_id: str) -> None:
        live = self._live.pop(run_id, None)
        if live is not None:
            live.runner.finish()

    # -- a run resumed after a pause in after_model ----------------------------------------------------
    def _hold_resumed(self, data: Any) -> None:
        """A run whose state starts with a model message nothing marked as judged resumes a turn
        that ``after_model`` paused on (a new turn starts with the user's message): that message
        is the held content, shown as an empty placeholder until ``after_model`` has decided."""
        messages = data.get("messages") if isinstance(data, dict) else None
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, AIMessage) and last.id and not is_guard_message(last) and last.id not in self._seen:
            self._resumed = last.id
            self._replaced[last.id] = AIMessage("", id=last.id, response_metadata={META_KEY: {"held": True}})

    def _release_resumed(self, data: dict[str, Any]) -> None:
        """Release the placeholder once ``after_model`` is done with the message, or at once when
        the run resumes some other node (the pause was not ours: the message was judged)."""
        if self._resumed_task is None and "result" not in data:
            if data.get("name") == f"{self.mw.name}.after_model":
                self._resumed_task = data.get("id")
                return
        elif "result" not in data or data.get("id") != self._resumed_task:
            return
        self._replaced.pop(self._resumed or "", None)
        self._resumed = None

    # -- whole messages and state snapshots ------------------------------------------------------------
    def _judge_whole(self, msg: AIMessage) -> Generator[Any, Any, None]:
        if not msg.id or msg.id in self._seen or is_guard_message(msg):
            return
        self._seen.add(msg.id)
        v: Verdicts = yield _Judge(msg, self._query)
        r, a, tools, _ = split(parts_of(msg))
        self._remember(msg.id, self._query, r, a, bool(tools), v)
        if v.stop is not None:
            self._replaced[msg.id] = refusal_message(v.stop, like=msg)
        elif v.reasoning is not None or v.answer is not None:
            self._replaced[msg.id] = rebuild_message(msg, reasoning=(v.reasoning.text if v.reasoning else r) or None,
                                                     text=v.answer.text if v.answer else a)

    def _remember(self, msg_id: str, query: str, r: str, a: str, tools: bool, v: Verdicts, complete: bool = True) -> None:
        self._seen.add(msg_id)
        self.mw._remember_stream(StreamedTurn(msg_id, query, r, a, tools, self.mw._stages(), v, complete))

    def _scrub(self, value: Any) -> Any:
        """``value`` with every replaced message swapped in (new containers; state is not touched)."""
        if isinstance(value, BaseMessage):  # what after_model wrote (marked) is shown as it is
            return self._replaced.get(value.id, value) if value.id and not is_guard_message(value) else value
        if isinstance(value, dict):
            out = {k: self._scrub(v) for k, v in value.items()}
            return out if any(out[k] is not value[k] for k in value) else value
        if isinstance(value, (list, tuple)):
            items = [self._scrub(v) for v in value]
            return type(value)(items) if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value


def _withhold(payload: dict[str, Any]) -> bool:
    """Empty ``payload`` in place and drop it from the main log. Every transformer still sees a
    dropped event (LangGraph's mux only keeps it out of the log), so what the built-ins project
    into ``run.messages`` must not carry it either: it becomes an empty text delta, which they
    ignore."""
    index = payload.get("index")
    payload.clear()
    payload.update({"event": "content-block-delta", "index": index if isinstance(index, int) else 0,
                    "delta": {"type": "text-delta", "text": ""}})
    return False


def _ai_messages(value: Any) -> list[AIMessage]:
    items = value if isinstance(value, list) else [value]
    return [m for m in items if isinstance(m, AIMessage) and not isinstance(m, AIMessageChunk)]


def _tool_fields(delta: dict[str, Any]) -> dict[str, Any] | None:
    fields = delta.get("fields")
    return fields if isinstance(fields, dict) and fields.get("type") in ("tool_call_chunk",) else None


def _tool_text(live: _Live, index: int, dtype: str, args: Any, name: Any) -> str:
    """The new tool-call text a delta carries (``block-delta`` repeats the args so far)."""
    args = args if isinstance(args, str) else ""
    if dtype == "block-delta":
        held = live.tool_args.get(index, "")
        live.tool_args[index] = args
        args = args[len(held):] if args.startswith(held) else args
    head = ""
    if isinstance(name, str) and name and index not in live.named:
        live.named.add(index)
        head = f"\n[tool call] {name}("
    return head + args


def _verdicts(turn: TurnGuard) -> Verdicts:
    """A streamed turn's outcome in ``judge``'s shape: the stop, else each stage's last word."""
    decisions: dict[Stage, Decision] = {}
    for t in turn.tracks:
        d = t.outcome
        if d is not None and (t.stage not in decisions or d.risk >= decisions[t.stage].risk):
            decisions[t.stage] = d
    if turn.stop is not None:
        decisions[turn.stop.stage] = turn.stop
    return Verdicts(stop=turn.stop, decisions=decisions)
