"""GuardMiddleware: guards for agents built with ``langchain.agents.create_agent``.

* ``before_model``: checks the newest user message (once, on the first model call of its turn).
  On BLOCK the run ends with a refusal AIMessage and the model is never called (``jump_to: end``).
  With ``check_tool_results=True`` it also checks the tool results the model is about to read
  (indirect prompt injection: a web page or file telling the model what to do). A blocked result
  is replaced (same message id) by a notice, or ends the run (``tool_result_action="end"``).
* ``after_model``: checks the AI message's reasoning and text. REDACT replaces the message (same
  id, so the state reducer swaps it in place) with the redacted text; BLOCK replaces it with the
  refusal and ends the run (its tool calls are dropped, never executed).
* ``wrap_model_call``: a ``GuardrailViolation`` raised while the model streams (by a
  ``GuardCallbackHandler`` in the run's callbacks) becomes the refusal message instead of an
  exception, so a streaming agent stopped mid-thought ends cleanly.

What it cannot do: ``after_model`` runs when the model has finished, so it cannot take back
tokens already streamed to the caller (``stream_mode="messages"``). Stop those with
``GuardCallbackHandler`` in the run's callbacks (which aborts the stream; see callbacks.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse, hook_config
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langgraph.runtime import Runtime

from ..errors import GuardrailViolation
from ..guard import Guard
from ..stream import Verdicts, ajudge, judge, parts_of
from ..stream.drive import split
from ..types import Action, Decision
from ._common import is_guard_message, marked, query_of, rebuild_message, refusal_message, turn_prompt


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
        turn, tools = self._before(state["messages"])
        if turn is not None and (out := self._after_prompt(state["messages"], self.guard.check_prompt(turn))):
            return out
        return self._tool_update([(m, self.guard.check_prompt(m.content)) for m in tools])

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        turn, tools = self._before(state["messages"])
        if turn is not None and (out := self._after_prompt(state["messages"], await self.guard.acheck_prompt(turn))):
            return out
        return self._tool_update([(m, await self.guard.acheck_prompt(m.content)) for m in tools])

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        msg, kw = self._last_ai(state)
        return None if msg is None else self._after(msg, judge(self.guard.stream_checks(), **kw))

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        msg, kw = self._last_ai(state)
        return None if msg is None else self._after(msg, await ajudge(self.guard.stream_checks(), **kw))

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        try:
            return handler(request)
        except GuardrailViolation as exc:
            if not self.catch_stream_violations:
                raise
            return refusal_message(exc.decision)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage:
        try:
            return await handler(request)
        except GuardrailViolation as exc:
            if not self.catch_stream_violations:
                raise
            return refusal_message(exc.decision)
