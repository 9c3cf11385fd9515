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

from ..content import normalize_text
from ..errors import GuardrailViolation
from ..guard import Guard
from ..streaming import extract_deltas, tool_call_text
from ..types import Action, Decision
from ._common import (
    META_KEY,
    decision_meta,
    is_guard_message,
    newest_human_content,
    rebuild_message,
    refusal_message,
    turn_prompt,
)


def _text(content: Any) -> str:
    return content if isinstance(content, str) else normalize_text(content, what="message").value


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
    @staticmethod
    def _new_user_turn(messages: Sequence[BaseMessage]) -> Any:
        """What the user said since the last AI message (first model call of the turn), or None;
        all of it when a caller appended several user messages at once."""
        return turn_prompt(messages)

    @staticmethod
    def _fresh_tool_results(messages: Sequence[BaseMessage]) -> list[ToolMessage]:
        """Tool results after the newest AI message: what the model is about to read."""
        out: list[ToolMessage] = []
        for m in reversed(messages):
            if isinstance(m, AIMessage):
                break
            if isinstance(m, ToolMessage) and not is_guard_message(m):
                out.append(m)
        return out[::-1]

    @staticmethod
    def _query(messages: Sequence[BaseMessage]) -> str:
        content = newest_human_content(messages)
        return "" if content is None else _text(content)

    # -- results ------------------------------------------------------------------------------
    def _redact_turn(self, messages: Sequence[BaseMessage], d: Decision) -> dict[str, Any]:
        """The model must read the redacted prompt: replace the user's message (same id). A turn of
        several user messages cannot be mapped back piece by piece, so it is refused instead."""
        turn = [m for m in _since_last_ai(messages) if isinstance(m, HumanMessage)]
        if len(turn) == 1 and turn[0].id:
            meta = {**(turn[0].response_metadata or {}), META_KEY: decision_meta(d)}
            return {"messages": [turn[0].model_copy(update={"content": d.text, "response_metadata": meta})]}
        refuse = d.model_copy(update={"action": Action.BLOCK, "text": self.guard.config.refusal_message})
        return self._end_with(refuse)

    @staticmethod
    def _end_with(decision: Decision, like: BaseMessage | None = None) -> dict[str, Any]:
        return {"messages": [refusal_message(decision, like=like)], "jump_to": "end"}

    def _tool_update(self, blocked: list[tuple[ToolMessage, Decision]]) -> dict[str, Any] | None:
        if not blocked:
            return None
        if self.tool_result_action == "end":
            return self._end_with(blocked[0][1])
        replaced = []
        for msg, d in blocked:
            meta = {**(msg.response_metadata or {}), META_KEY: decision_meta(d)}
            replaced.append(
                msg.model_copy(
                    update={"content": self.tool_result_notice.format(reason=d.reason), "response_metadata": meta}
                )
            )
        return {"messages": replaced}

    def _after(self, msg: AIMessage, rd: Decision | None, ad: Decision | None) -> dict[str, Any] | None:
        for d in (rd, ad):
            if d is not None and d.blocked:
                return self._end_with(d, like=msg)
        reasoning, text = extract_deltas(msg)
        new_reasoning = rd.text if rd is not None and rd.action is Action.REDACT else reasoning
        new_text = ad.text if ad is not None and ad.action is Action.REDACT else text
        if new_reasoning == reasoning and new_text == text:
            return None
        d = next(x for x in (ad, rd) if x is not None and x.action is Action.REDACT)
        new = rebuild_message(msg, reasoning=new_reasoning or None, text=new_text)
        meta = {**(new.response_metadata or {}), META_KEY: decision_meta(d)}
        return {"messages": [new.model_copy(update={"response_metadata": meta})]}

    @staticmethod
    def _last_ai(state: AgentState) -> AIMessage | None:
        messages = state["messages"]
        if messages and isinstance(messages[-1], AIMessage) and not is_guard_message(messages[-1]):
            return messages[-1]
        return None

    # -- hooks --------------------------------------------------------------------------------
    @hook_config(can_jump_to=["end"])
    def before_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        messages = state["messages"]
        turn = self._new_user_turn(messages) if self.check_prompt else None
        if turn is not None:
            d = self.guard.check_prompt(turn)
            if d.blocked:
                return self._end_with(d)
            if d.action is Action.REDACT:
                return self._redact_turn(messages, d)
        if self.check_tool_results:
            blocked = []
            for tm in self._fresh_tool_results(messages):
                d = self.guard.check_prompt(tm.content)
                if d.blocked:
                    blocked.append((tm, d))
            return self._tool_update(blocked)
        return None

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        messages = state["messages"]
        turn = self._new_user_turn(messages) if self.check_prompt else None
        if turn is not None:
            d = await self.guard.acheck_prompt(turn)
            if d.blocked:
                return self._end_with(d)
            if d.action is Action.REDACT:
                return self._redact_turn(messages, d)
        if self.check_tool_results:
            blocked = []
            for tm in self._fresh_tool_results(messages):
                d = await self.guard.acheck_prompt(tm.content)
                if d.blocked:
                    blocked.append((tm, d))
            return self._tool_update(blocked)
        return None

    def _tool_text(self, msg: Any) -> str:
        """The AI message's tool calls as text (their arguments are model output too)."""
        return tool_call_text(msg).strip() if self.check_response else ""

    @hook_config(can_jump_to=["end"])
    def after_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        msg = self._last_ai(state)
        if msg is None:
            return None
        query = self._query(state["messages"])
        reasoning, text = extract_deltas(msg)
        rd = self.guard.check_reasoning(query, reasoning) if self.check_reasoning and reasoning else None
        if rd is not None and rd.blocked:
            return self._end_with(rd, like=msg)
        td = self.guard.check_response(query, tools) if (tools := self._tool_text(msg)) else None
        if td is not None and (td.blocked or td.action is Action.REDACT):
            return self._end_with(td, like=msg)  # a refused turn must not run its tools
        ad = self.guard.check_response(query, text) if self.check_response and text else None
        return self._after(msg, rd, ad)

    @hook_config(can_jump_to=["end"])
    async def aafter_model(self, state: AgentState, runtime: Runtime) -> dict[str, Any] | None:
        msg = self._last_ai(state)
        if msg is None:
            return None
        query = self._query(state["messages"])
        reasoning, text = extract_deltas(msg)
        rd = await self.guard.acheck_reasoning(query, reasoning) if self.check_reasoning and reasoning else None
        if rd is not None and rd.blocked:
            return self._end_with(rd, like=msg)
        td = await self.guard.acheck_response(query, tools) if (tools := self._tool_text(msg)) else None
        if td is not None and (td.blocked or td.action is Action.REDACT):
            return self._end_with(td, like=msg)  # a refused turn must not run its tools
        ad = await self.guard.acheck_response(query, text) if self.check_response and text else None
        return self._after(msg, rd, ad)

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


def _since_last_ai(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for m in reversed(list(messages)):
        if isinstance(m, AIMessage):
            break
        out.append(m)
    return out[::-1]
