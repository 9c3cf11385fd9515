"""Escalations that pause an agent: LangGraph ``interrupt()`` in the shape of LangChain's
``HumanInTheLoopMiddleware``, and the link to the review queue.

The interrupt value is an HITLRequest with one action request per escalation::

    {"action_requests": [{"name": "guardrails_escalation",
                          "args": {"escalation_id", "stage", "risk", "categories", "reason", "text",
                                   "request_id"},
                          "description": "..."}],
     "review_configs": [{"action_name": "guardrails_escalation",
                         "allowed_decisions": ["approve", "edit", "reject"]}]}

and the run resumes with ``Command(resume={"decisions": [decision]})``: ``{"type": "approve"}``,
``{"type": "reject", "message": ...}`` or ``{"type": "edit", "edited_action": {"name": ...,
"args": {"text": ...}}}``. A decision may also carry ``"resolver"`` (who decided; recorded).

The flows (``prompt_flow``, ``turn_flow``) are written once as generators of operations (a
check, an interrupt, a review to record) and run by a sync or an async driver (middleware.py).
A node that interrupts runs again from its start on resume, so every operation with a side
effect (a guard check writes an audit record and maybe an escalation; a review is appended) runs
as a LangGraph ``task``: on resume its result comes back from the checkpoint instead of running
twice.

The review queue: every escalation is in the audit store (when the Guard audits); ``args``
carry its id, and the check's metadata carries the run's ``thread_id`` (``metadata.langgraph``),
so a reviewer's decision taken in the queue (review page, CLI) can resume the run:
``resume_from_review(agent, store, escalation_id)``, or ``resume_reviewed(agent, store)`` for
every reviewed one (a worker's poll). A decision given straight to the agent is
appended to the queue too (``resolve``), in the review page's format.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..observe import Auditor, AuditStore, Escalation, EscalationAlreadyResolved, EscalationNotFound
from ..observe.reviews import edit_note, recheck_metadata, release_refusal, released_edit, user_note
from ..errors import GuardConfigError, GuardInputError
from ..types import Action, Decision, Stage
from ._schema import RESUME_SCHEMA

log = logging.getLogger("guardrails_plugin")

ACTION_NAME = "guardrails_escalation"
ALLOWED = ["approve", "edit", "reject"]
#: metadata key (on the check, hence on the audit record and the escalation) with the run's ids
RUN_META = "langgraph"
DEFAULT_RESOLVER = "agent-review"


class ReviewDecisionError(GuardInputError, ValueError):
    """A resume value that is no approve / edit / reject decision, or a review that cannot be
    turned into one."""


def held(d: Decision | None) -> bool:
    """An ESCALATE that holds its content until a person decides."""
    return d is not None and d.action is Action.ESCALATE and d.hold


# -- the interrupt value and the answer -------------------------------------------------------------


def escalation_request(d: Decision, *, escalation_id: int | None, text: str) -> dict[str, Any]:
    """The HITLRequest for one escalation; ``text`` is the held content the person decides on."""
    stage = str(d.stage)
    args = {"escalation_id": escalation_id, "stage": stage, "risk": d.risk, "categories": list(d.categories),
            "reason": d.reason, "text": text, "request_id": d.request_id}
    description = (f"The guard escalated this {stage} text (risk {d.risk:.2f}: {d.reason}). Approve to release "
                   "it, edit it (the edit is checked again) or reject it.")
    return {"action_requests": [{"name": ACTION_NAME, "args": args, "description": description}],
            "review_configs": [{"action_name": ACTION_NAME, "allowed_decisions": list(ALLOWED)}]}


@dataclass
class Review:
    kind: str  #: approve | edit | reject
    text: str | None = None  #: the edit
    message: str | None = None  #: a rejection's message (or a note)
    resolver: str = DEFAULT_RESOLVER


def parse_review(value: Any) -> Review:
    """The decision in a resume value: ``{"decisions": [d]}`` (HITLResponse) or ``d`` itself."""
    if isinstance(value, Mapping) and "decisions" in value:
        decisions = value["decisions"]
        if not isinstance(decisions, list) or len(decisions) != 1:
            raise ReviewDecisionError(f"an escalation takes exactly one decision, got {decisions!r}")
        value = decisions[0]
    if not isinstance(value, Mapping) or value.get("type") not in ALLOWED:
        raise ReviewDecisionError(f"expected a decision of type {' / '.join(ALLOWED)}, got {value!r}")
    resolver = value.get("resolver")
    resolver = resolver if isinstance(resolver, str) and resolver.strip() else DEFAULT_RESOLVER
    message = value.get("message")
    message = message if isinstance(message, str) and message.strip() else None
    if value["type"] != "edit":
        return Review(value["type"], message=message, resolver=resolver)
    action = value.get("edited_action")
    args = action.get("args") if isinstance(action, Mapping) else None
    text = args.get("text") if isinstance(args, Mapping) else None
    if not isinstance(text, str) or not text.strip():
        raise ReviewDecisionError("an edit needs the replacement text in edited_action.args.text "
                                  "(reject the escalation to drop the content)")
    return Review("edit", text=text, message=message, resolver=resolver)


# -- operations the flows ask their driver for ----------------------------------------------------


@dataclass
class Check:
    """Run a guard check (``stage`` of ``text``; ``query`` for reasoning / response); the driver
    answers with ``(Decision, escalation id or None)``."""

    stage: Stage
    text: str
    query: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ask:
    """``interrupt(value, response_schema=schema)``; the driver answers with the resume value.
    LangGraph checks the answer against ``schema`` before it saves it, so a malformed answer
    raises ``pydantic.ValidationError`` and the same question can be answered again."""

    value: dict[str, Any]
    schema: Any = RESUME_SCHEMA


@dataclass
class Resolve:
    """Append a review to the queue (when the Guard audits); the driver answers None."""

    escalation_ids: list[int]
    approved: bool
    resolver: str
    note: str | None


Flow = Generator[Any, Any, Any]


@dataclass
class Outcome:
    """How a review of one held text ended: ``text`` to release (the original or the checked
    edit), or ``refusal`` (the Decision to end the run with)."""

    text: str | None = None
    decision: Decision | None = None
    refusal: Decision | None = None
    message: str | None = None
    edited: bool = False
    review: dict[str, Any] = field(default_factory=dict)


def review(d: Decision, esc_id: int | None, text: str, query: str, related: list[int] | None = None) -> Flow:
    """Ask a person about held ``text`` until it is approved, rejected, or edited into text the
    guard lets through. An edit the guard escalates again is asked about again; one it blocks
    ends the run with the refusal."""
    ids = [i for i in [esc_id, *(related or [])] if i is not None]
    edited = False  # an edit escalated again: what is approved next is the edit
    why: str | None = None  # why the last edit was not released, shown with the question again
    while True:
        ask = escalation_request(d, escalation_id=esc_id, text=text)
        if why:
            ask["action_requests"][0]["description"] += f" Your last edit was not released: {why}."
        answer = parse_review((yield Ask(ask)))
        meta = {"escalation_id": esc_id, "kind": answer.kind, "resolver": answer.resolver}
        if answer.kind == "approve":
            yield Resolve(ids, True, answer.resolver, user_note(answer.message))
            return Outcome(text=text, decision=d, edited=edited, review=meta)
        if answer.kind == "reject":
            yield Resolve(ids, False, answer.resolver, user_note(answer.message))
            return Outcome(refusal=d, message=answer.message, review=meta)
        edit = answer.text or ""
        d2, id2 = yield Check(d.stage, edit, query, recheck_metadata(esc_id, answer.resolver))
        note = edit_note(edit, d2, answer.message)
        why = release_refusal(d2)  # observe/reviews.py: only a real, judged ALLOW releases an edit
        if why is None:
            yield Resolve(ids, True, answer.resolver, note)  # the review page's edit format
            return Outcome(text=edit, decision=d2, edited=True, review={**meta, "recheck": str(d2.action)})
        if d2.action is not Action.BLOCK and not held(d2):
            continue  # not released (unjudged, a redaction, an unheld escalate): still pending, asked again
        # the edit is not released: the original stays refused, and the run ends or asks again
        yield Resolve(ids, False, answer.resolver, f"{note} (not released)")
        if not held(d2):
            return Outcome(refusal=d2, review={**meta, "recheck": str(d2.action)})
        d, esc_id, text, ids, edited = d2, id2, edit, [i for i in [id2] if i is not None], True


# -- the review queue -------------------------------------------------------------------------------


def auditor_of(guard: Any) -> Auditor | None:
    found = getattr(guard, "auditor", None)
    if isinstance(found, Auditor):
        return found
    return next((h for h in getattr(guard, "hooks", ()) if isinstance(h, Auditor)), None)


def find_escalation(guard: Any, d: Decision, timeout: float = 10.0) -> int | None:
    """The queue id of the escalation ``d`` raised (None when the Guard does not audit). The
    auditor may write in the background: its queue is flushed first."""
    auditor = auditor_of(guard)
    if auditor is None or d.action is not Action.ESCALATE:
        return None
    try:
        auditor.flush(timeout)
        for e in reversed(auditor.store.list_escalations("pending")):
            if e.request_id == d.request_id and e.stage == str(d.stage):
                return e.id
    except Exception:  # a store outage must not stop the review: the person still decides
        log.exception("guardrails-plugin could not find the escalation of request %s", d.request_id)
    return None


def record_review(guard: Any, op: Resolve) -> None:
    """Append the review of every escalation in ``op`` (already resolved ones are left alone:
    the decision may have come from the queue in the first place)."""
    auditor = auditor_of(guard)
    if auditor is None:
        return
    for esc_id in op.escalation_ids:
        try:
            auditor.store.resolve(esc_id, op.approved, resolver=op.resolver, note=op.note)
        except (EscalationAlreadyResolved, EscalationNotFound):
            pass
        except Exception:
            log.exception("guardrails-plugin could not record the review of escalation %s", esc_id)


# -- resuming a paused run from the queue -----------------------------------------------------------


def run_config(esc: Escalation) -> dict[str, Any]:
    """The RunnableConfig that resumes the run an escalation paused (from its metadata)."""
    run = (esc.metadata or {}).get(RUN_META) or {}
    if not run.get("thread_id"):
        raise ReviewDecisionError(f"escalation {esc.id} did not come from a paused agent run (no thread_id)")
    conf = {"thread_id": run["thread_id"]}
    if run.get("checkpoint_ns"):
        conf["checkpoint_ns"] = run["checkpoint_ns"]
    return {"configurable": conf}


def review_decision(store: AuditStore, escalation_id: int, *, edited_text: str | None = None) -> dict[str, Any]:
    """The decision a reviewer took in the queue, as an HITL decision. An edit's text is the
    re-check record's content (stored when the audit stores content), or ``edited_text``."""
    esc = store.get_escalation(escalation_id)
    if esc is None:
        raise EscalationNotFound(escalation_id)
    if esc.status == "pending":
        raise ReviewDecisionError(f"escalation {escalation_id} has not been reviewed yet")
    by = {"resolver": esc.resolver} if esc.resolver else {}
    if esc.status == "rejected":
        return {"type": "reject", **({"message": esc.note} if esc.note else {}), **by}
    released = released_edit(esc, store.records(request_id=esc.request_id))
    if released is None and edited_text is None:
        return {"type": "approve", **by}
    text = edited_text if edited_text is not None else released.content if released is not None else None
    if text is None:
        raise ReviewDecisionError(
            f"escalation {escalation_id} was resolved by an edit whose text the store does not keep "
            "(audit store_content is off): pass edited_text=")
    return {"type": "edit", "edited_action": {"name": ACTION_NAME, "args": {"text": text}}, **by}


def _pending_interrupt(interrupts: Any, escalation_id: int) -> Any:
    for it in interrupts:
        reqs = it.value.get("action_requests", []) if isinstance(it.value, Mapping) else []
        if any(r.get("args", {}).get("escalation_id") == escalation_id for r in reqs):
            return it
    raise ReviewDecisionError(f"the run of escalation {escalation_id} is not paused on it (resumed already?)")


def _command(store: AuditStore, escalation_id: int, interrupts: Any, edited_text: str | None) -> Any:
    from langgraph.types import Command

    pending = _pending_interrupt(interrupts, escalation_id)
    decision = review_decision(store, escalation_id, edited_text=edited_text)
    return Command(resume={pending.id: {"decisions": [decision]}})  # answers that interrupt by its id


def _config(store: AuditStore, escalation_id: int, config: dict[str, Any] | None) -> dict[str, Any]:
    if config is not None:
        return config
    esc = store.get_escalation(escalation_id)
    if esc is None:
        raise EscalationNotFound(escalation_id)
    return run_config(esc)


def review_command(agent: Any, store: AuditStore, escalation_id: int, config: dict[str, Any] | None = None,
                   *, edited_text: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(Command, config)`` that resumes the run paused on ``escalation_id`` with the decision
    the reviewer took in the queue; for callers that stream the resumed run themselves."""
    config = _config(store, escalation_id, config)
    return _command(store, escalation_id, agent.get_state(config).interrupts, edited_text), config


def resume_from_review(agent: Any, store: AuditStore, escalation_id: int, config: dict[str, Any] | None = None,
                       *, edited_text: str | None = None, **invoke_kw: Any) -> Any:
    """Resume the agent run paused on ``escalation_id`` with the decision the reviewer took in
    the queue (``agent`` needs the checkpointer the run used; ``config`` defaults to the run's
    thread from the escalation's metadata). Returns what ``agent.invoke`` returns."""
    command, config = review_command(agent, store, escalation_id, config, edited_text=edited_text)
    return agent.invoke(command, config, **invoke_kw)


async def aresume_from_review(agent: Any, store: AuditStore, escalation_id: int,
                              config: dict[str, Any] | None = None, *, edited_text: str | None = None,
                              **invoke_kw: Any) -> Any:
    """Async twin of ``resume_from_review`` (the store is read in a worker thread)."""
    import asyncio

    config = await asyncio.to_thread(_config, store, escalation_id, config)
    interrupts = (await agent.aget_state(config)).interrupts
    command = await asyncio.to_thread(_command, store, escalation_id, interrupts, edited_text)
    return await agent.ainvoke(command, config, **invoke_kw)


def resume_reviewed(agent: Any, store: AuditStore, **invoke_kw: Any) -> dict[int, Any]:
    """Resume every run of ``agent`` that is paused on an escalation a reviewer has decided in the
    queue (a worker that owns the agent calls this on a timer). Returns ``{escalation id:
    result}``; a run that cannot be resumed is logged and skipped."""
    done: dict[int, Any] = {}
    for esc in [*store.list_escalations("approved"), *store.list_escalations("rejected")]:
        if not ((esc.metadata or {}).get(RUN_META) or {}).get("thread_id"):
            continue
        config = run_config(esc)
        try:
            _pending_interrupt(agent.get_state(config).interrupts, esc.id)
        except ReviewDecisionError:
            continue  # resumed already, or paused on something else
        try:
            done[esc.id] = resume_from_review(agent, store, esc.id, config, **invoke_kw)
        except Exception:
            log.exception("guardrails-plugin could not resume the run of escalation %s", esc.id)
    return done


def require_checkpointer(has_checkpointer: bool) -> None:
    if not has_checkpointer:
        raise GuardConfigError(
            "GuardMiddleware pauses the agent on ESCALATE (escalation_hold is on), which needs a "
            "checkpointer: create_agent(..., checkpointer=InMemorySaver()) or a persistent one "
            "(langgraph-checkpoint-sqlite / -postgres); or GuardMiddleware(guard, pause_on_escalation=False) "
            "to refuse escalated content instead")
