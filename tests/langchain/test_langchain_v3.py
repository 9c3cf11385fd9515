"""GuardMiddleware's stream transformer in real ``create_agent`` agents read through the v3 event
stream (``stream_events`` / ``astream_events(version="v3")``): raw events and ``run.messages``.

A reader never sees answer text no check covered, a harmful reasoning stream is cut with its lag
reported, tool calls appear only with a turn that passed, and benign streams come through
unchanged. ScriptedEngine guards (marker word = harmful), checks every 8 tokens.
"""

from __future__ import annotations

import warnings

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_support import (
    MARKER,
    STYLES,
    ScriptedReasoningChatModel,
    Turn,
    filler,
    harmful_reasoning,
    marker_end,
    scripted_guard,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from guardrails_plugin import Stage
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.langchain import GuardMiddleware
from guardrails_plugin.stream.extract import approx_tokens, extract_deltas

pytestmark = [pytest.mark.timeout(90), pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")]
warnings.filterwarnings("ignore", message="The v3 streaming protocol")

EVERY_8 = {"stages": {"reasoning": {"check_every_tokens": 8}, "response": {"check_every_tokens": 8}}}
MODES = ["sync", "async"]
LONG_HARMFUL = filler(30) + f"here is the {MARKER} recipe " + filler(10)


def _inp(text="hi"):
    return {"messages": [HumanMessage(text)]}


async def _raw(agent, mode, inp=None, config=None):
    """Every raw event, stringified as the reader got it."""
    if mode == "sync":
        return [str(e) for e in agent.stream_events(inp or _inp(), config, version="v3")]
    run = await agent.astream_events(inp or _inp(), config, version="v3")
    return [str(e) async for e in run]


async def _messages(agent, mode, inp=None, config=None):
    """``(reasoning, text, output message)`` of each stream in ``run.messages``, and the final state."""
    out = []
    if mode == "sync":
        run = agent.stream_events(inp or _inp(), config, version="v3")
        for s in run.messages:
            out.append(("".join(s.reasoning), "".join(s.text), s.output))
        return out, run.output
    run = await agent.astream_events(inp or _inp(), config, version="v3")
    async for s in run.messages:
        out.append(("".join([x async for x in s.reasoning]), "".join([x async for x in s.text]), await s.output))
    return out, await run.output()


def _guarded(turn, style="blocks", latency_s=0.01, **mw):
    guard, engine = scripted_guard(latency_s=latency_s, **EVERY_8)
    model = ScriptedReasoningChatModel(turns=[turn], style=style)
    middleware = GuardMiddleware(guard, **mw)
    return create_agent(model, tools=[], middleware=[middleware]), middleware, model, engine, guard


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mode", MODES)
async def test_a_benign_stream_comes_through_unchanged(style, mode):
    turn = Turn("I think this is fine.\n\nStill fine. " + filler(20), "Hello there, friend. " + filler(25))
    agent, mw, _, engine, _ = _guarded(turn, style)
    plain = create_agent(ScriptedReasoningChatModel(turns=[turn], style=style), tools=[])
    got, final = await _messages(agent, mode)
    want, plain_final = await _messages(plain, mode)
    assert [(r, t) for r, t, _ in got] == [(r, t) for r, t, _ in want] == [(turn["reasoning"], turn["answer"])]
    assert got[0][2].content == want[0][2].content  # the assembled message, block for block
    assert final["messages"][-1].content == plain_final["messages"][-1].content
    assert mw.last_stream is not None and mw.last_stream.stop is None


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("answer", ["short", "long"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_harmful_answer_never_reaches_the_v3_reader(style, answer, mode):
    turn = Turn("Let me answer.", f"A {MARKER}." if answer == "short" else LONG_HARMFUL)
    agent, mw, model, _, guard = _guarded(turn, style)
    events = await _raw(agent, mode)
    assert not [e for e in events if MARKER in e]  # no event, snapshot or finish block carries it
    got, final = await _messages(agent, mode)
    ((reasoning, text, output),) = got
    refusal = guard.config.refusal_message
    assert reasoning == turn["reasoning"] and text.endswith(refusal)
    shown = text[: -len(refusal)]
    assert turn["answer"].startswith(shown) and MARKER not in shown  # only text a check covered
    if answer == "short":
        assert shown == ""
    assert final["messages"][-1].content == refusal and model.calls == 2  # one per run


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mode", MODES)
async def test_a_harmful_reasoning_stream_is_cut_with_its_lag_reported(style, mode):
    turn = Turn(harmful_reasoning(), "The answer is 42.")
    agent, mw, _, _, guard = _guarded(turn, style)
    events = await _raw(agent, mode)
    assert not [e for e in events if "answer is 42" in e]
    got, final = await _messages(agent, mode)
    ((reasoning, text, _),) = got
    st = mw.last_stream.stats(Stage.REASONING)
    assert st.aborted and st.abort_offset >= marker_end(turn["reasoning"]) and st.detection_lag_tokens is not None
    assert turn["reasoning"].startswith(reasoning) and reasoning != turn["reasoning"]  # cut
    assert approx_tokens(reasoning) <= st.abort_offset + st.detection_lag_tokens
    assert text == guard.config.refusal_message
    assert final["messages"][-1].content == guard.config.refusal_message
    if style == "reasoning_content":  # message-finish's additional_kwargs carry no more than the stream did
        assert got[0][2].additional_kwargs["reasoning_content"] == reasoning


@pytest.mark.parametrize("mode", MODES)
async def test_after_model_reuses_the_stream_verdicts(mode):
    agent, _, _, engine, _ = _guarded(Turn("Short thought.", "Short answer."))
    await _raw(agent, mode)
    # prompt, the reasoning (closed when the answer starts), the held answer's first delta (checked
    # at once, beside the reasoning's end) and its end-of-text check; after_model asks for nothing
    assert len(engine.prompts) == 4


@pytest.mark.parametrize("harmful", [False, True])
@pytest.mark.parametrize("mode", MODES)
async def test_tool_calls_appear_whole_and_only_with_a_turn_that_passed(harmful, mode):
    ran = []

    @tool
    def send_mail(body: str) -> str:
        """Send an e-mail."""
        ran.append(body)
        return "sent"

    body = f"how to build a {MARKER}" if harmful else "see you at noon"
    turns = [Turn("", "Let me send it.", [{"name": "send_mail", "args": {"body": body}, "id": "c1"}]), Turn("", "Done.")]
    guard, _ = scripted_guard(latency_s=0.01, **EVERY_8)
    model = ScriptedReasoningChatModel(turns=turns)
    agent = create_agent(model, tools=[send_mail], middleware=[GuardMiddleware(guard)])
    got, final = await _messages(agent, mode)
    if harmful:
        assert ran == [] and got[0][2].tool_calls == [] and final["messages"][-1].content == guard.config.refusal_message
    else:
        assert ran == [body] and got[0][2].tool_calls[0]["args"] == {"body": body}
        assert any(isinstance(m, ToolMessage) for m in final["messages"])
    model.calls, model.turns = 0, turns
    events = await _raw(agent, mode)
    assert (not [e for e in events if MARKER in e]) if harmful else any(body in e for e in events)


@pytest.mark.parametrize("mode", MODES)
async def test_a_message_that_was_not_streamed_is_judged_before_it_shows(mode):
    guard, engine = scripted_guard(latency_s=0.0, **EVERY_8)
    model = ScriptedReasoningChatModel(turns=[Turn("Fine.", f"A {MARKER} answer.")], disable_streaming=True)
    agent = create_agent(model, tools=[], middleware=[GuardMiddleware(guard)])
    events = await _raw(agent, mode)
    assert events and not [e for e in events if MARKER in e]
    calls = len(engine.prompts)
    got, final = await _messages(agent, mode)
    assert MARKER not in str([o.content for _, _, o in got]) and final["messages"][-1].content == guard.config.refusal_message
    assert len(engine.prompts) - calls <= 3  # judged once: after_model reused the verdict


@pytest.mark.parametrize("decision", ["approve", "reject"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_held_escalation_is_withheld_until_a_person_approves(mode, decision):
    from guardrails_plugin import Guard, GuardConfig

    config = GuardConfig(escalation_hold=True, escalate_threshold=0.2, block_threshold=0.6,
                         models={"FlexGuard": {"family": "flexguard"}},
                         stages={"prompt": {"guards": ["FlexGuard"]}, "response": {"guards": ["FlexGuard"]}})
    engine = ScriptedEngine.from_rules({"grey": 0.5})
    guard = Guard(config, engine=engine)
    model = ScriptedReasoningChatModel(turns=[Turn("Let me think.", "a grey answer")])
    agent = create_agent(model, tools=[], middleware=[GuardMiddleware(guard)], checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t1"}}
    events = await _raw(agent, mode, config=cfg)
    # the held text is only in the question to the person (the interrupt), never in the stream
    assert [e for e in events if "a grey answer" in e] == [e for e in events if "action_requests" in e]
    state = agent.get_state(cfg)
    (it,) = state.interrupts
    assert it.value["action_requests"][0]["args"]["text"] == "a grey answer"
    checks = len(engine.prompts)
    # prompt, reasoning, the answer's first delta and the whole answer: after_model asked about
    # the stream's own verdict
    assert checks == 4
    # the resumed run, read through the v3 stream too: its first state snapshot still holds the
    # message back (the person's answer is not in yet); after it, approved text or the refusal
    resumed = await _raw(agent, mode, Command(resume={"decisions": [{"type": decision}]}), cfg)
    shown = [e for e in resumed if "a grey answer" in e]
    assert shown == [] if decision == "reject" else shown and "a grey answer" not in resumed[0]
    final = agent.get_state(cfg).values
    assert extract_deltas(final["messages"][-1])[1] == ("a grey answer" if decision == "approve"
                                                        else guard.config.refusal_message)
    assert len(engine.prompts) == checks  # the stream's verdict was reused, nothing judged twice
    guard.close()
