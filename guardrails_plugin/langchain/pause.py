"""GuardMiddleware's escalation flows and their sync / async drivers (the HITL shapes and the
review queue are in hitl.py).

* ``prompt_flow``: the user's turn escalated: approve lets the model read it, edit replaces it
  (checked again), reject ends the run with the refusal.
* ``turn_flow``: a model turn's reasoning and / or answer escalated: one question per held stage,
  reasoning first. A BLOCK anywhere in the turn refuses it without asking anyone. Approve
  releases the message as the model wrote it (and marks it, so nothing checks it again); an edit
  of the answer replaces its text and drops its tool calls (the reviewer wrote the answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, RemoveMessage
from langgraph.config import get_config
from langgraph.func import task
from langgraph.types import interrupt

from ..content import normalize_text
from ..stream import Part, Verdicts, ajudge, judge
from ..stream.drive import split
from ..types import Action, Decision, Stage
from ._common import META_KEY, GuardHost, decision_meta, rebuild_message, turn_prompt
from .hitl import (
    RUN_META,
    Ask,
    Check,
    Flow,
    Resolve,
    find_escalation,
    held,
    record_review,
    require_checkpointer,
    review,
)

try:  # where LangGraph puts the run's checkpointer in a node's config
    from langgraph._internal._constants import CONFIG_KEY_CHECKPOINTER
except ImportError:  # pragma: no cover - older layouts
    CONFIG_KEY_CHECKPOINTER = "__pregel_checkpointer"

_STAGES = (Stage.REASONING, Stage.RESPONSE)


@dataclass
class Judge:
    """Check a whole model turn; the driver answers with ``TurnVerdicts``."""

    query: str
    parts: list[Part]
    metadata: dict[str, Any]
    msg_id: str | None = None


@dataclass
class TurnVerdicts:
    verdicts: Verdicts
    ids: dict[Stage, int] = field(default_factory=dict)  #: queue ids of held escalations
    related: dict[Stage, list[int]] = field(default_factory=dict)  #: the stream's own escalations


def run_metadata() -> dict[str, Any]:
    """The run's thread, recorded with each check so the queue can resume the run."""
    try:
        conf = get_config().get("configurable") or {}
    except RuntimeError:  # not inside a graph
        return {}
    return {RUN_META: {"thread_id": conf.get("thread_id")}} if conf.get("thread_id") else {}


def check_checkpointer() -> None:
    """Fail before any check or model call when the run cannot be paused (see middleware.py for
    why this cannot happen when the agent is built)."""
    try:
        conf = get_config().get("configurable") or {}
    except RuntimeError:
        return
    require_checkpointer(conf.get(CONFIG_KEY_CHECKPOINTER) is not None)


# -- the flows --------------------------------------------------------------------------------------


def prompt_flow(mw: GuardHost, messages: Sequence[BaseMessage], meta: dict[str, Any]) -> Flow:
    turn = turn_prompt(messages) or []
    d, esc_id = yield Check(Stage.PROMPT, turn, metadata=meta)  # type: ignore[arg-type]
    if not held(d):
        return mw._after_prompt(messages, d)
    out = yield from review(d, esc_id, normalize_text(turn, what="prompt").value, "")
    if out.refusal is not None:
        return mw._end_with(_refusal(mw, out.refusal, out.message, out.review))
    if not out.edited:
        return None  # approved: the model reads the turn as sent
    if not all(isinstance(m, HumanMessage) and m.id for m in turn):  # cannot be replaced in state
        return mw._end_with(_refusal(mw, d, None, out.review))
    last = _mark(turn[-1].model_copy(update={"content": out.text}), out.decision, out.review)  # type: ignore[arg-type]
    return {"messages": [*(RemoveMessage(id=m.id) for m in turn[:-1]), last]}


def turn_flow(mw: GuardHost, msg: AIMessage, query: str, parts: list[Part], meta: dict[str, Any]) -> Flow:
    tv: TurnVerdicts = yield Judge(query, parts, meta, msg.id)
    v = tv.verdicts
    reasoning, text, tools, _ = split(parts)
    hard = v.stop if v.stop is not None and not held(v.stop) else None
    for each in v.decisions.values():
        if hard is None and each.blocked and not held(each):
            hard = each
    answer = v.decisions.get(Stage.RESPONSE)
    if hard is None and answer is not None and answer.action is Action.REDACT and tools:
        hard = answer.model_copy(update={"action": Action.BLOCK, "text": mw.guard.config.refusal_message})
    if hard is not None:
        return mw._end_with(hard, like=msg)
    new = {Stage.REASONING: reasoning, Stage.RESPONSE: text}
    last: Decision | None = None
    reviews: list[dict[str, Any]] = []
    edited_answer = False
    for stage in _STAGES:
        d = v.decisions.get(stage)
        if held(d):
            shown = new[stage] if stage is Stage.REASONING else "\n".join(x for x in (new[stage], tools) if x)
            out = yield from review(d, tv.ids.get(stage), shown, query, tv.related.get(stage))  # type: ignore[arg-type]
            if out.refusal is not None:
                return mw._end_with(_refusal(mw, out.refusal, out.message, out.review), like=msg)
            if out.edited:
                new[stage] = out.text or ""
                edited_answer = edited_answer or stage is Stage.RESPONSE
            last = out.decision
            reviews.append(out.review)
        elif d is not None and d.action is Action.REDACT:
            new[stage], last = d.text, d
    if last is None:
        return None
    out_msg = rebuild_message(msg, reasoning=new[Stage.REASONING] or None, text=new[Stage.RESPONSE])
    if edited_answer:  # the reviewer wrote the answer: the model's tool calls do not run
        blocks = out_msg.content if isinstance(out_msg.content, list) else None
        update: dict[str, Any] = {"tool_calls": [], "invalid_tool_calls": []}
        if blocks is not None:
            update["content"] = [b for b in blocks if not (isinstance(b, dict) and "tool_call" in str(b.get("type")))]
        out_msg = out_msg.model_copy(update=update)
    return {"messages": [_mark(out_msg, last, reviews)]}


def _mark(msg: BaseMessage, d: Decision | None, reviews: Any) -> BaseMessage:
    meta = decision_meta(d) if d is not None else {}
    if reviews:
        meta["review"] = reviews
    return msg.model_copy(update={"response_metadata": {**(msg.response_metadata or {}), META_KEY: meta}})


def _refusal(mw: GuardHost, d: Decision, message: str | None, rev: dict[str, Any]) -> Decision:
    text = message or mw.guard.config.refusal_message
    return d.model_copy(update={"text": text, "detail": f"review: {rev}" if rev else d.detail})


# -- the drivers ---------------------------------------------------------------------------------


def _dump(d: Decision | None) -> dict[str, Any] | None:
    return d.model_dump(mode="json") if d is not None else None


def _load(d: dict[str, Any] | None) -> Decision | None:
    return Decision.model_validate(d) if d is not None else None


def _dump_turn(v: Verdicts, ids: dict[Stage, int], related: dict[Stage, list[int]]) -> dict[str, Any]:
    return {"stop": _dump(v.stop), "reasoning": _dump(v.reasoning), "answer": _dump(v.answer),
            "decisions": {str(s): _dump(d) for s, d in v.decisions.items()},
            "ids": {str(s): i for s, i in ids.items()}, "related": {str(s): i for s, i in related.items()}}


def _load_turn(o: dict[str, Any]) -> TurnVerdicts:
    v = Verdicts(stop=_load(o["stop"]), reasoning=_load(o["reasoning"]), answer=_load(o["answer"]),
                 decisions={Stage(s): _load(d) for s, d in o["decisions"].items()})  # type: ignore[misc]
    return TurnVerdicts(v, {Stage(s): i for s, i in o["ids"].items()},
                        {Stage(s): i for s, i in o["related"].items()})


def _task(name: str, fn: Any) -> Any:
    """``fn`` as a LangGraph task (its result checkpointed, replayed when the node runs again)."""
    return task(name=name)(fn)


class Driver:
    """Runs a flow's operations for one middleware. Checks and reviews run as LangGraph tasks
    (replayed from the checkpoint when the node runs again on resume)."""

    def __init__(self, mw: GuardHost):
        self.mw = mw
        self.guard = mw.guard

    # -- sync --
    def run(self, flow: Flow) -> Any:
        try:
            op = next(flow)
            while True:
                op = flow.send(self._do(op))
        except StopIteration as stop:
            return stop.value

    def _do(self, op: Any) -> Any:
        if isinstance(op, Ask):
            return interrupt(op.value, response_schema=op.schema)
        if isinstance(op, Resolve):
            return _task("guardrails_review", lambda: record_review(self.guard, op))().result()
        if isinstance(op, Check):
            out = _task("guardrails_check", lambda: self._check(op))().result()
            return _load(out["decision"]), out["escalation_id"]
        return _load_turn(_task("guardrails_judge", lambda: self._judge(op))().result())

    def _check(self, op: Check) -> dict[str, Any]:
        d = self.guard.check(self._request(op))
        return {"decision": _dump(d), "escalation_id": find_escalation(self.guard, d)}

    def _judge(self, op: Judge) -> dict[str, Any]:
        v, related = self.mw._streamed_verdicts(op.msg_id, op.query, op.parts)
        if v is None:
            v = judge(self.guard.stream_checks(), op.query, op.parts, metadata=op.metadata, **self.mw._stages())
        ids = {s: i for s, d in v.decisions.items() if held(d) and (i := find_escalation(self.guard, d)) is not None}
        return _dump_turn(v, ids, related)

    # -- async --
    async def arun(self, flow: Flow) -> Any:
        try:
            op = next(flow)
            while True:
                op = flow.send(await self._ado(op))
        except StopIteration as stop:
            return stop.value

    async def _ado(self, op: Any) -> Any:
        if isinstance(op, Ask):
            return interrupt(op.value, response_schema=op.schema)
        if isinstance(op, Resolve):
            async def _resolve() -> None:
                await asyncio.to_thread(record_review, self.guard, op)

            return await _task("guardrails_review", _resolve)()
        if isinstance(op, Check):
            async def _check() -> dict[str, Any]:
                d = await self.guard.acheck(self._request(op))
                return {"decision": _dump(d), "escalation_id": await asyncio.to_thread(find_escalation, self.guard, d)}

            out = await _task("guardrails_check", _check)()
            return _load(out["decision"]), out["escalation_id"]

        async def _judge() -> dict[str, Any]:
            v, related = await asyncio.to_thread(self.mw._streamed_verdicts, op.msg_id, op.query, op.parts)
            if v is None:
                v = await ajudge(self.guard.stream_checks(), op.query, op.parts, metadata=op.metadata,
                                 **self.mw._stages())
            ids = {}
            for s, d in v.decisions.items():
                if held(d) and (i := await asyncio.to_thread(find_escalation, self.guard, d)) is not None:
                    ids[s] = i
            return _dump_turn(v, ids, related)

        return _load_turn(await _task("guardrails_judge", _judge)())

    def _request(self, op: Check) -> Any:
        field_ = {Stage.PROMPT: "prompt", Stage.REASONING: "reasoning", Stage.RESPONSE: "response"}[op.stage]
        kw = {field_: op.text} if op.stage is Stage.PROMPT else {"prompt": op.query, field_: op.text}
        meta = {**run_metadata(), **op.metadata}
        return self.guard.request(op.stage, metadata=meta, **kw)
