"""GuardMiddleware: guards for agents built with ``langchain.agents.create_agent``.

* ``before_model``: checks the newest user message (once, on the first model call of its turn).
  On BLOCK the run ends with a refusal AIMessage and the model is never called (``jump_to: end``).
  With ``check_tool_results=True`` it also checks the tool results the model is about to read
  (indirect prompt injection: a web page or file telling the model what to do). A blocked result
  is replaced (same message id) by a notice, or ends the run (``tool_result_action="end"``).
* ``after_model``: checks the AI message's reasoning and text. REDACT replaces the message (same
  id, so the state reducer swaps it in place) with the redacted text; BLOCK replaces it with the
  refusal and ends the run (its tool calls are dropped, never executed).
* ``wrap_model_call``: runs the model through the event-safe wrapper (model_call.py), so
  ``stream_mode="messages"`` / ``"updates"`` / ``"values"`` and ``astream_events`` v2 show only
  released text and the model node returns the checked message; a ``GuardrailViolation`` raised
  while the model streams (by a ``GuardCallbackHandler`` in the run's callbacks) becomes the
  refusal message instead of an exception.

* ``transformers``: a v3 stream transformer (stream_transformer.py) that holds answer text back
  in ``stream_events`` / ``astream_events(version="v3")`` until a check has covered it and cuts a
  harmful reasoning stream; ``after_model`` reuses its verdicts instead of checking twice.
* Escalations under ``escalation_hold`` pause the run with LangGraph ``interrupt()`` in the shape
  of LangChain's ``HumanInTheLoopMiddleware`` (hitl.py, pause.py) and need a checkpointer.

Where the wrapper is not used (model_call.py: runs that pause on escalations, a
``response_format`` other than a ToolStrategy, ``guard_model_call=False``), ``after_model`` runs
when the model has finished and cannot take back tokens a legacy stream already showed; read the
v3 event stream there, which the transformer guards.

Why the checkpointer is checked at the first model call, not when ``create_agent`` builds the
agent: create_agent hands its ``checkpointer`` to ``graph.compile`` only; a middleware is asked
for its name, hooks, tools, state schema and stream transformers, none of which sees it. So
``create_guarded_agent`` checks at build time, and ``before_model`` checks first thing (before any
check or model call), which also accepts an agent run as a subgraph of a checkpointed graph.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse, hook_config
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.runtime import Runtime

from ..errors import GuardrailViolation
from ..guard import Guard
from ..stream import Part, TurnGuard, Verdicts, ajudge, judge, parts_of
from ..stream.drive import split
from ..types import Action, Decision, Stage
from ._common import is_guard_message, marked, query_of, rebuild_message, refusal_message, turn_prompt
from .hitl import find_escalation, held, require_checkpointer
from .model_call import guarded_request, remember
from .pause import Driver, check_checkpointer, prompt_flow, run_metadata, turn_flow
from .stream_transformer import StreamedTurn, transformer_factory

#: streamed turns whose verdicts after_model may still ask for (a run that never gets there
#: must not grow the map without bound)
_STREAMED_MAX = 256


class GuardMiddleware(AgentMiddleware):
    """Prompt, reasoning, response and (optionally) tool-result checks for create_agent."""

    def __init__(
        self,
        guard: Guard,
        *,
        check_prompt: bool = True,
        check_reasoning: bool = True,
        check_response: bool = True,
        check_tool_results: bool = False,
        tool_result_action: str = "replace",
        tool_result_notice: str = "[tool result withheld by the guard: {reason}]",
        catch_stream_violations: bool = True,
        pause_on_escalation: bool = True,
        stream_transformer: bool = True,
        guard_model_call: bool = True,
        trace_unchecked: bool = False,
    ):
        super().__init__()
        if tool_result_action not in ("replace", "end"):
            raise ValueError("tool_result_action must be 'replace' or 'end'")
        self.guard = guard
        self.check_prompt = check_prompt
        self.check_reasoning = check_reasoning
        self.check_response = check_response
        self.check_tool_results = check_tool_results
        self.tool_result_action = tool_result_action
        self.tool_result_notice = tool_result_notice
        self.catch_stream_violations = catch_stream_violations
        #: under ``escalation_hold``, pause the run for a person instead of refusing (hitl.py)
        self.pause_on_escalation = pause_on_escalation
        #: run the model through the event-safe wrapper (model_call.py)
        self.guard_model_call = guard_model_call
        #: let tracers record the model's run unchecked (events.py; off: checked content only)
        self.trace_unchecked = trace_unchecked
        #: v3 stream transformers (``AgentMiddleware.transformers``, read when the agent is built)
        self.transformers = (transformer_factory(self),) if stream_transformer else ()
        #: the TurnGuard of the most recent turn guarded in a v3 stream (stats: detection lag)
        self.last_stream: TurnGuard | None = None
        self._streamed: OrderedDict[str, StreamedTurn] = OrderedDict()
        self._streamed_lock = threading.Lock()
        self._driver = Driver(self)

    @property
    def pausing(self) -> bool:
        """True when an escalation pauses the run (``escalation_hold`` and ``pause_on_escalation``)."""
        return self.pause_on_escalation and self.guard.config.escalation_hold

    def _stages(self) -> dict[str, bool]:
        return {"reasoning": self.check_reasoning, "response": self.check_response}

    # -- verdicts of streamed turns (stream_transformer.py) ---------------------------------------
    def _remember_stream(self, turn: StreamedTurn) -> None:
        with self._streamed_lock:
            self._streamed[turn.message_id] = turn
            while len(self._streamed) > _STREAMED_MAX:
                self._streamed.popitem(last=False)

    def _streamed_verdicts(
        self, msg_id: str | None, query: str, parts: list[Part]
    ) -> tuple[Verdicts | None, dict[Stage, list[int]]]:
        """The verdicts a v3 stream already reached on this very message (same query, same
        text), else None. A stream stopped by a held escalation of a prefix is judged again in
        full (the person decides on the whole text); its own escalation is returned as related,
        to be resolved with the whole message's; one whose checks saw all of the text is not."""
        with self._streamed_lock:
            turn = self._streamed.pop(msg_id, None) if msg_id else None
        if turn is None or not turn.matches(query, parts, self._stages()):
            return None, {}
        if turn.stop is None:
            return Verdicts(decisions=dict(turn.decisions)), {}
        if not held(turn.stop) or not self.pausing or turn.complete:
            return Verdicts(stop=turn.stop, decisions=dict(turn.decisions)), {}
        esc = find_escalation(self.guard, turn.stop)
        return None, ({turn.stop.stage: [esc]} if esc is not None else {})

    # -- what to check ------------------------------------------------------------------------
    def _before(self, messages: Sequence[BaseMessage]) -> tuple[list[Any] | None, list[ToolMessage]]:
        """The new user turn to check (first model call of the turn) and the fresh tool results
        (after the newest AI message: what the model is about to read)."""
        turn = turn_prompt(messages) if self.check_prompt else None
        tools: list[ToolMessage] = []
        for m in reversed(messages) if self.check_tool_results else ():
            if isinstance(m, AIMessage):
                break
            if isinstance(m, ToolMessage) and not is_guard_message(m):
                tools.insert(0, m)
        return turn, tools

    def _after_prompt(self, messages: Sequence[BaseMessage], d: Decision) -> dict[str, Any] | None:
        if d.blocked:
            return self._end_with(d)
        if d.action is not Action.REDACT:
            return None
        # The model must read the redacted prompt: replace the user's message (same id). A turn of
        # several user messages cannot be mapped back piece by piece, so it is refused instead.
        turn = turn_prompt(messages) or []
        if len(turn) == 1 and isinstance(turn[0], HumanMessage) and turn[0].id:
            return {"messages": [marked(turn[0], d, content=d.text)]}
        return self._end_with(d.model_copy(update={"action": Action.BLOCK, "text": self.guard.config.refusal_message}))

    def _tool_update(self, checked: list[tuple[ToolMessage, Decision]]) -> dict[str, Any] | None:
        blocked = [(m, d) for m, d in checked if d.blocked]
        if not blocked:
            return None
        if self.tool_result_action == "end":
            return self._end_with(blocked[0][1])
        return {"messages": [marked(m, d, content=self.tool_result_notice.format(reason=d.reason)) for m, d in blocked]}

    @staticmethod
    def _end_with(decision: Decision, like: BaseMessage | None = None) -> dict[str, Any]:
        return {"messages": [refusal_message(decision, like=like)], "jump_to": "end"}

    def _after(self, msg: AIMessage, v: Verdicts) -> dict[str, Any] | None:
        if v.stop is not None:
            return self._end_with(v.stop, like=msg)  # a refused turn never runs its tools
        if v.reasoning is None and v.answer is None:
            return None
        reasoning, text, _, _ = split(parts_of(msg))
        new = rebuild_message(msg, reasoning=(v.reasoning.text if v.reasoning else reasoning) or None,
                              text=v.answer.text if v.answer else text)
        return {"messages": [marked(new, v.answer or v.reasoning)]}  # type: ignore[arg-type]

    def _last_ai(self, state: AgentState) -> tuple[AIMessage | None, dict[str, Any]]:
        messages = state["messages"]
        msg = messages[-1] if messages else None
        if not isinstance(msg, AIMessage) or is_guard_message(msg):
            return None, {}
        kw = {"reasoning": self.check_reasoning, "response": self.check_response}
        return msg, {"query": query_of(messages), "parts": parts_of(msg), **kw}

    # -- hooks --------------------------------------------------------------------------------
    @hook_config(can_jump_to=["end"])
    def before_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        if self.pausing:
            check_checkpointer()
        turn, tools = self._before(state["messages"])
        if turn is not None and self.pausing:
            if out := self._driver.run(prompt_flow(self, state["messages"], run_metadata())):
                return out
        elif turn is not None and (out := self._after_prompt(state["messages"], self.guard.check_prompt(turn))):
            return out
        return self._tool_update([(m, self.guard.check_prompt(m.content)) for m in tools])

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        if self.pausing:
            check_checkpointer()
        turn, tools = self._before(state["messages"])
        if turn is not None and self.pausing:
            if out := await self._driver.arun(prompt_flow(self, state["messages"], run_metadata())):
                return out
        elif turn is not None and (out := self._after_prompt(state["messages"], await self.guard.acheck_prompt(turn))):
            return out
        return self._tool_update([(m, await self.guard.acheck_prompt(m.content)) for m in tools])

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        msg, kw = self._last_ai(state)
        if msg is None:
            return None
        if self.pausing:
            return self._driver.run(turn_flow(self, msg, kw["query"], kw["parts"], run_metadata()))
        v, _ = self._streamed_verdicts(msg.id, kw["query"], kw["parts"])
        return self._after(msg, v or judge(self.guard.stream_checks(), **kw))

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        msg, kw = self._last_ai(state)
        if msg is None:
            return None
        if self.pausing:
            return await self._driver.arun(turn_flow(self, msg, kw["query"], kw["parts"], run_metadata()))
        v, _ = self._streamed_verdicts(msg.id, kw["query"], kw["parts"])  # memory only: no I/O
        return self._after(msg, v or await ajudge(self.guard.stream_checks(), **kw))

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        guarded = guarded_request(self, request)
        try:
            response: Any = handler(guarded[0] if guarded else request)
        except GuardrailViolation as exc:
            if not self.catch_stream_violations:
                raise
            return refusal_message(exc.decision)
        if guarded:
            remember(self, guarded[1], request, response)
        return response  # type: ignore[no-any-return]

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        guarded = guarded_request(self, request)
        try:
            response: Any = await handler(guarded[0] if guarded else request)
        except GuardrailViolation as exc:
            if not self.catch_stream_violations:
                raise
            return refusal_message(exc.decision)
        if guarded:
            remember(self, guarded[1], request, response)
        return response  # type: ignore[no-any-return]


def create_guarded_agent(
    model: Any,
    tools: Sequence[Any] | None = None,
    *,
    guard: Guard,
    middleware: Sequence[AgentMiddleware] = (),
    checkpointer: Any = None,
    guard_options: dict[str, Any] | None = None,
    **create_agent_kw: Any,
) -> Any:
    """``langchain.agents.create_agent`` with ``GuardMiddleware(guard, **guard_options)`` last in
    ``middleware`` (so its ``before_model`` judges what the model will read after the others'
    edits, and its ``after_model``, which runs first, judges the model's output before any other
    middleware acts on it). Fails here, when the agent is built, if an escalation would pause the
    run (``escalation_hold``) and there is no ``checkpointer``: a saver, or ``True`` for an agent
    that runs as a subgraph of a checkpointed graph."""
    from langchain.agents import create_agent

    mw = GuardMiddleware(guard, **(guard_options or {}))
    if mw.pausing:
        require_checkpointer(checkpointer is not None and checkpointer is not False)
    return create_agent(model, tools, middleware=[*middleware, mw], checkpointer=checkpointer, **create_agent_kw)
