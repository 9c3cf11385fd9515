"""Escalations pause a real ``create_agent`` run (LangGraph ``interrupt()``, HumanInTheLoopMiddleware's
shape) and a person's decision resumes it: approve, reject, edit and a harmful edit, on the prompt,
reasoning and response stages, sync and async, with an in-memory and a SQLite checkpointer, across
a process restart, and from the review queue.

The guard is ScriptedEngine.from_rules (NOT a guard): "grey" scores 0.5 (the escalate band
[0.2, 0.6)), "bomb" 1.0 (block). FlexGuard judges prompts and answers, ReasoningShield reasoning.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_support import ScriptedReasoningChatModel, Turn
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.types import Command
from pydantic import ValidationError

from guardrails_plugin import Guard, GuardConfig
from guardrails_plugin.audit import open_store
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.errors import GuardConfigError
from guardrails_plugin.langchain import (
    ACTION_NAME,
    GuardMiddleware,
    ReviewDecisionError,
    aresume_from_review,
    create_guarded_agent,
    resume_from_review,
    resume_reviewed,
)
from guardrails_plugin.langchain._common import META_KEY
from guardrails_plugin.review.queue import ReviewQueue
from guardrails_plugin.stream.extract import extract_deltas

pytestmark = pytest.mark.timeout(120)

RULES = {"bomb": "harmful", "grey": 0.5}
REFUSAL = "I can't help with that."

# stage -> (user text, model turn, the held text the person sees, a clean edit, a harmful edit)
CASES = {
    "prompt": ("tell me a grey secret", Turn("Let me think.", "Here you go."), "tell me a grey secret",
               "tell me a nice secret", "tell me about a bomb"),
    "reasoning": ("hi", Turn("a grey thought", "Fine answer."), "a grey thought",
                  "a clean thought", "a bomb thought"),
    "response": ("hi", Turn("Let me think.", "a grey answer"), "a grey answer", "a clean answer", "a bomb answer"),
}
DECISIONS = ["approve", "reject", "edit", "harmful_edit"]


def hitl_config(tmp_path: Path, *, hold: bool = True, store_content: bool = True) -> GuardConfig:
    return GuardConfig(
        escalation_hold=hold, escalate_threshold=0.2, block_threshold=0.6,
        models={"FlexGuard": {"family": "flexguard"}},
        stages={"prompt": {"guards": ["FlexGuard"]}, "response": {"guards": ["FlexGuard"]}},
        audit={"path": str(tmp_path / "audit.db"), "store_content": store_content},
    )


@pytest.fixture
def guard(tmp_path):
    g = Guard(hitl_config(tmp_path), engine=ScriptedEngine.from_rules(RULES))
    yield g
    g.close()


def _decision(kind: str, stage: str) -> dict:
    if kind == "approve":
        return {"type": "approve", "resolver": "alice"}
    if kind == "reject":
        return {"type": "reject", "message": "Not today.", "resolver": "alice"}
    text = CASES[stage][3] if kind == "edit" else CASES[stage][4]
    return {"type": "edit", "edited_action": {"name": ACTION_NAME, "args": {"text": text}}, "resolver": "alice"}


def _agent(model, guard, checkpointer, **mw):
    return create_agent(model, tools=[], middleware=[GuardMiddleware(guard, **mw)], checkpointer=checkpointer)


def _request_of(result) -> dict:
    (it,) = result["__interrupt__"]
    return it.value


def _check_request(value: dict, stage: str, store) -> int:
    """The interrupt is an HITLRequest for one escalation whose id is the queue's."""
    (action,) = value["action_requests"]
    (review_config,) = value["review_configs"]
    assert action["name"] == review_config["action_name"] == ACTION_NAME
    assert review_config["allowed_decisions"] == ["approve", "edit", "reject"]
    args = action["args"]
    assert {"escalation_id", "stage", "risk", "categories", "reason", "text"} <= set(args)
    assert args["stage"] == stage and args["text"] == CASES[stage][2] and args["risk"] == 0.5
    esc = store.get_escalation(args["escalation_id"])
    assert esc is not None and esc.stage == stage and esc.status == "pending"
    assert esc.content is not None and CASES[stage][2] in esc.content
    assert esc.metadata["langgraph"]["thread_id"] == "t1"
    return args["escalation_id"]


def _check_outcome(kind: str, stage: str, state: dict, model, guard, store, esc_id: int) -> None:
    user, turn, _, edit, _ = CASES[stage]
    last = state["messages"][-1]
    assert isinstance(last, AIMessage)
    esc = store.get_escalation(esc_id)
    if kind in ("reject", "harmful_edit"):
        assert last.content == ("Not today." if kind == "reject" else REFUSAL)
        assert "grey" not in str(last.content) and "bomb" not in str(last.content)
        assert esc.status == "rejected" and esc.resolver == "alice"
        assert model.calls == (0 if stage == "prompt" else 1)
        if kind == "harmful_edit":
            assert esc.note.startswith("[edit sha256:") and "re-checked block" in esc.note
        return
    assert esc.status == "approved" and esc.resolver == "alice"
    assert model.calls == 1
    reasoning, text = extract_deltas(last)
    if stage == "prompt":
        humans = [m for m in state["messages"] if isinstance(m, HumanMessage)]
        read = [m.content for m in model.inputs[0] if isinstance(m, HumanMessage)]
        expected = edit if kind == "edit" else user
        assert [m.content for m in humans] == read == [expected]
        assert (reasoning, text) == (turn["reasoning"], turn["answer"])
    else:
        assert last.response_metadata[META_KEY]["review"][0]["kind"] == kind  # never checked again
        want = {"reasoning": turn["reasoning"], "response": turn["answer"]}
        if kind == "edit":
            want[stage] = edit
        assert (reasoning, text) == (want["reasoning"], want["response"])
    if kind == "edit":
        assert esc.note.startswith("[edit sha256:") and "re-checked allow" in esc.note


def _escalations(store, stage):
    return [e for e in store.list_escalations() if e.stage == stage]


@pytest.mark.parametrize("kind", DECISIONS)
@pytest.mark.parametrize("stage", list(CASES))
@pytest.mark.parametrize("saver", ["memory", "sqlite"])
def test_sync_escalation_pauses_and_resumes(tmp_path, guard, stage, kind, saver):
    user, turn, *_ = CASES[stage]
    model = ScriptedReasoningChatModel(turns=[turn])
    conn = sqlite3.connect(tmp_path / "ckpt.db", check_same_thread=False) if saver == "sqlite" else None
    agent = _agent(model, guard, SqliteSaver(conn) if conn else InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    store = open_store(str(tmp_path / "audit.db"))
    try:
        paused = agent.invoke({"messages": [HumanMessage(user)]}, config)
        esc_id = _check_request(_request_of(paused), stage, store)
        assert model.calls == (0 if stage == "prompt" else 1)
        state = agent.invoke(Command(resume={"decisions": [_decision(kind, stage)]}), config)
        assert "__interrupt__" not in state
        guard.auditor.flush()
        _check_outcome(kind, stage, state, model, guard, store, esc_id)
        # the escalated check ran once: on resume it came back from the checkpoint
        assert len(_escalations(store, stage)) == 1
    finally:
        store.close()
        if conn:
            conn.close()


@pytest.mark.parametrize("kind", DECISIONS)
@pytest.mark.parametrize("stage", list(CASES))
@pytest.mark.parametrize("saver", ["memory", "sqlite"])
async def test_async_escalation_pauses_and_resumes(tmp_path, guard, stage, kind, saver):
    user, turn, *_ = CASES[stage]
    model = ScriptedReasoningChatModel(turns=[turn])
    config = {"configurable": {"thread_id": "t1"}}
    store = open_store(str(tmp_path / "audit.db"))
    try:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "ckpt.db")) as aio_saver:
            agent = _agent(model, guard, aio_saver if saver == "sqlite" else InMemorySaver())
            paused = await agent.ainvoke({"messages": [HumanMessage(user)]}, config)
            esc_id = _check_request(_request_of(paused), stage, store)
            state = await agent.ainvoke(Command(resume={"decisions": [_decision(kind, stage)]}), config)
        assert "__interrupt__" not in state
        guard.auditor.flush()
        _check_outcome(kind, stage, state, model, guard, store, esc_id)
        assert len(_escalations(store, stage)) == 1
    finally:
        store.close()


def test_an_edit_escalated_again_is_asked_about_again(tmp_path, guard):
    model = ScriptedReasoningChatModel(turns=[Turn("Let me think.", "a grey answer")])
    agent = _agent(model, guard, InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    first = _request_of(agent.invoke({"messages": [HumanMessage("hi")]}, config))["action_requests"][0]["args"]
    edit = {"type": "edit", "edited_action": {"name": ACTION_NAME, "args": {"text": "still grey, but kinder"}}}
    second = _request_of(agent.invoke(Command(resume={"decisions": [edit]}), config))["action_requests"][0]["args"]
    assert second["text"] == "still grey, but kinder" and second["escalation_id"] != first["escalation_id"]
    state = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    assert extract_deltas(state["messages"][-1])[1] == "still grey, but kinder"
    assert model.calls == 1  # the model never ran again
    store = guard.auditor.store
    assert store.get_escalation(first["escalation_id"]).status == "rejected"  # not released as written
    assert store.get_escalation(second["escalation_id"]).status == "approved"


@pytest.mark.parametrize("kind", ["approve", "reject", "edit"])
def test_tool_calls_of_an_escalated_answer_run_only_when_approved(guard, kind):
    sent = []

    @tool
    def send_mail(body: str) -> str:
        """Send an e-mail."""
        sent.append(body)
        return "sent"

    turns = [Turn("", "Sending.", [{"name": "send_mail", "args": {"body": "a grey offer"}, "id": "c1"}]),
             Turn("", "Done.")]
    model = ScriptedReasoningChatModel(turns=turns)
    agent = create_agent(model, tools=[send_mail], middleware=[GuardMiddleware(guard)], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    args = _request_of(agent.invoke({"messages": [HumanMessage("hi")]}, config))["action_requests"][0]["args"]
    assert "send_mail" in args["text"] and "a grey offer" in args["text"]  # the person sees the call
    assert sent == []
    decision = _decision(kind, "response") if kind != "edit" else {
        "type": "edit", "edited_action": {"name": ACTION_NAME, "args": {"text": "I will not send that."}}}
    state = agent.invoke(Command(resume={"decisions": [decision]}), config)
    assert sent == (["a grey offer"] if kind == "approve" else [])
    assert any(isinstance(m, ToolMessage) for m in state["messages"]) is (kind == "approve")
    if kind == "edit":  # the reviewer wrote the answer: no tool call left in it
        assert state["messages"][-1].tool_calls == [] and extract_deltas(state["messages"][-1])[1] == "I will not send that."


def test_a_worker_resumes_every_reviewed_run(tmp_path, guard):
    model = ScriptedReasoningChatModel(turns=[Turn("Let me think.", "a grey answer")])
    agent = _agent(model, guard, InMemorySaver())
    ids = {}
    for thread in ("a", "b", "c"):
        paused = agent.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": thread}})
        ids[thread] = _request_of(paused)["action_requests"][0]["args"]["escalation_id"]
    store = open_store(str(tmp_path / "audit.db"))
    queue = ReviewQueue(store)
    queue.approve(ids["a"], "bob")
    queue.reject(ids["b"], "bob", note="No.")  # c stays pending: its run stays paused
    done = resume_reviewed(agent, store)
    assert set(done) == {ids["a"], ids["b"]}
    assert extract_deltas(done[ids["a"]]["messages"][-1])[1] == "a grey answer"
    assert done[ids["b"]]["messages"][-1].content == "No."
    assert agent.get_state({"configurable": {"thread_id": "c"}}).interrupts
    assert resume_reviewed(agent, store) == {}  # nothing twice
    store.close()


def test_a_turn_with_a_block_anywhere_is_refused_without_asking(guard):
    model = ScriptedReasoningChatModel(turns=[Turn("a grey thought", "a bomb answer")])
    state = _agent(model, guard, InMemorySaver()).invoke({"messages": [HumanMessage("hi")]},
                                                         {"configurable": {"thread_id": "t1"}})
    assert "__interrupt__" not in state and state["messages"][-1].content == REFUSAL


@pytest.mark.parametrize("bad", [
    {"type": "edit", "edited_action": {"args": {}}},  # no text
    {"type": "edit", "edited_action": {"args": {"text": "  "}}},
    {"type": "respond", "message": "x"},  # a decision HumanInTheLoopMiddleware knows, an escalation does not
    {"decisions": []},
])
def test_a_malformed_answer_is_refused_before_it_is_saved(guard, bad):
    agent = _agent(ScriptedReasoningChatModel(turns=[Turn("x", "a grey answer")]), guard, InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    (it,) = agent.invoke({"messages": [HumanMessage("hi")]}, config)["__interrupt__"]
    assert it.response_schema is not None  # published for clients, like per-call HITL interrupts
    with pytest.raises(ValidationError):
        agent.invoke(Command(resume=bad), config)
    # the question is still open: a good answer goes through
    state = agent.invoke(Command(resume={"decisions": [{"type": "approve"}]}), config)
    assert extract_deltas(state["messages"][-1])[1] == "a grey answer"


# -- no checkpointer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True])
async def test_without_a_checkpointer_the_first_model_call_fails_before_any_check(tmp_path, use_async):
    engine = ScriptedEngine.from_rules(RULES)
    guard = Guard(hitl_config(tmp_path), engine=engine)
    model = ScriptedReasoningChatModel(turns=[Turn("x", "a grey answer")])
    agent = _agent(model, guard, None)
    inp = {"messages": [HumanMessage("hi")]}
    with pytest.raises(GuardConfigError, match="checkpointer"):
        await agent.ainvoke(inp) if use_async else agent.invoke(inp)
    assert engine.prompts == [] and model.calls == 0
    guard.close()


def test_create_guarded_agent_checks_the_checkpointer_when_it_is_built(tmp_path, guard):
    model = ScriptedReasoningChatModel(turns=[Turn("x", "a grey answer")])
    with pytest.raises(GuardConfigError, match="checkpointer"):
        create_guarded_agent(model, [], guard=guard)
    agent = create_guarded_agent(model, [], guard=guard, checkpointer=InMemorySaver())
    paused = agent.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t1"}})
    assert _request_of(paused)["action_requests"][0]["args"]["stage"] == "response"
    # refusing instead of pausing needs no checkpointer
    create_guarded_agent(model, [], guard=guard, guard_options={"pause_on_escalation": False})


def test_without_hold_nothing_pauses_and_no_checkpointer_is_needed(tmp_path):
    guard = Guard(hitl_config(tmp_path, hold=False), engine=ScriptedEngine.from_rules(RULES))
    model = ScriptedReasoningChatModel(turns=[Turn("a grey thought", "a grey answer")])
    state = create_guarded_agent(model, [], guard=guard).invoke({"messages": [HumanMessage("grey?")]})
    assert extract_deltas(state["messages"][-1]) == ("a grey thought", "a grey answer")
    guard.auditor.flush()
    assert {e.stage for e in guard.auditor.store.list_escalations("pending")} == {"prompt", "reasoning", "response"}
    guard.close()


# -- the review queue --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["approve", "reject", "edit"])
@pytest.mark.parametrize("use_async", [False, True])
async def test_a_decision_taken_in_the_review_queue_resumes_the_run(tmp_path, guard, kind, use_async):
    model = ScriptedReasoningChatModel(turns=[Turn("Let me think.", "a grey answer")])
    agent = _agent(model, guard, InMemorySaver())
    paused = agent.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t1"}})
    esc_id = _request_of(paused)["action_requests"][0]["args"]["escalation_id"]
    store = open_store(str(tmp_path / "audit.db"))  # the reviewer's own connection (review page, CLI)
    queue = ReviewQueue(store, Guard(hitl_config(tmp_path), engine=ScriptedEngine.from_rules(RULES)))
    if kind == "approve":
        queue.approve(esc_id, "bob")
    elif kind == "reject":
        queue.reject(esc_id, "bob", note="We do not answer that.")
    else:
        assert queue.edit(esc_id, "bob", "a clean answer").released
    # the config defaults to the run's thread, recorded with the escalation
    resume = aresume_from_review(agent, store, esc_id) if use_async else None
    state = await resume if resume else resume_from_review(agent, store, esc_id)
    text = extract_deltas(state["messages"][-1])[1]
    assert text == {"approve": "a grey answer", "reject": "We do not answer that.", "edit": "a clean answer"}[kind]
    esc = store.get_escalation(esc_id)
    assert esc.resolver == "bob"  # the queue's record stays: reviews are appended once
    assert esc.status == ("rejected" if kind == "reject" else "approved")
    with pytest.raises(ReviewDecisionError, match="not paused"):
        resume_from_review(agent, store, esc_id)
    store.close()
    queue.guard.close()


def test_an_edit_whose_text_the_store_does_not_keep_needs_it_passed(tmp_path):
    guard = Guard(hitl_config(tmp_path, store_content=False), engine=ScriptedEngine.from_rules(RULES))
    agent = _agent(ScriptedReasoningChatModel(turns=[Turn("x", "a grey answer")]), guard, InMemorySaver())
    paused = agent.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "t1"}})
    esc_id = _request_of(paused)["action_requests"][0]["args"]["escalation_id"]
    store = open_store(str(tmp_path / "audit.db"))
    ReviewQueue(store, guard).edit(esc_id, "bob", "a clean answer")
    with pytest.raises(ReviewDecisionError, match="edited_text"):
        resume_from_review(agent, store, esc_id)
    state = resume_from_review(agent, store, esc_id, edited_text="a clean answer")
    assert extract_deltas(state["messages"][-1])[1] == "a clean answer"
    store.close()
    guard.close()


# -- across a process restart (SQLite checkpointer) ------------------------------------------------------

_RESTART = textwrap.dedent("""
    import json, sqlite3, sys
    sys.path[:0] = [{tests!r}, {here!r}]
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langchain_support import ScriptedReasoningChatModel, Turn
    from test_langchain_hitl import RULES, hitl_config
    from guardrails_plugin import Guard
    from guardrails_plugin.audit import open_store
    from guardrails_plugin.engines import ScriptedEngine
    from guardrails_plugin.langchain import GuardMiddleware, resume_from_review
    from pathlib import Path

    tmp, phase = Path(sys.argv[1]), sys.argv[2]
    engine = ScriptedEngine.from_rules(RULES)
    guard = Guard(hitl_config(tmp), engine=engine)
    model = ScriptedReasoningChatModel(turns=[Turn("Let me think.", "a grey answer")])
    conn = sqlite3.connect(tmp / "ckpt.db", check_same_thread=False)
    agent = create_agent(model, tools=[], middleware=[GuardMiddleware(guard)], checkpointer=SqliteSaver(conn))
    if phase == "run":
        out = agent.invoke({{"messages": [HumanMessage("hi")]}}, {{"configurable": {{"thread_id": "t1"}}}})
        args = out["__interrupt__"][0].value["action_requests"][0]["args"]
        result = {{"escalation_id": args["escalation_id"], "text": args["text"]}}
    else:
        store = open_store(str(tmp / "audit.db"))
        out = resume_from_review(agent, store, int(phase))
        result = {{"content": out["messages"][-1].content}}
    result.update(model_calls=model.calls, guard_calls=len(engine.prompts))
    guard.close()
    print(json.dumps(result, default=str))
""")


def _phase(tmp_path: Path, phase: str) -> dict:
    here = Path(__file__).resolve().parent  # tests/langchain: this module; tests/: langchain_support
    script = _RESTART.format(tests=str(here.parent), here=str(here))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), phase], capture_output=True, text=True,
                          timeout=90, cwd=here.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_paused_in_one_process_resumes_in_another(tmp_path):
    first = _phase(tmp_path, "run")
    assert first["text"] == "a grey answer" and first["model_calls"] == 1
    store = open_store(str(tmp_path / "audit.db"))
    ReviewQueue(store).approve(first["escalation_id"], "carol")  # a third process: the reviewer
    store.close()
    second = _phase(tmp_path, str(first["escalation_id"]))
    # released as approved; neither the model nor the guard ran again in the new process
    assert second["model_calls"] == 0 and second["guard_calls"] == 0
    assert any(b.get("text") == "a grey answer" for b in second["content"] if isinstance(b, dict))
