"""GuardedRunnable around real chat models and chains: invoke / ainvoke / stream / astream."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_support import (
    MARKER,
    STYLES,
    ScriptedReasoningChatModel,
    Turn,
    chunk_count,
    filler,
    harmful_reasoning,
    marker_end,
    scripted_guard,
)

from guardrails_plugin import Action, GuardrailViolation, Stage
from guardrails_plugin.langchain import GuardedRunnable, guard_runnable
from guardrails_plugin.langchain._common import META_KEY
from guardrails_plugin.stream.extract import approx_tokens, extract_deltas

pytestmark = pytest.mark.timeout(60)

REDACT_RESPONSE = {"stages": {"response": {"guards": ["GuardReasoner-1B"], "flagged_action": "redact"}}}


def _model(turn, style="blocks", **kw):
    return ScriptedReasoningChatModel(turns=[turn], style=style, **kw)


def _collect(chunks):
    got_r = got_a = ""
    last = None
    for c in chunks:
        r, a = extract_deltas(c)
        got_r, got_a, last = got_r + r, got_a + a, c
    return got_r, got_a, last


async def _acollect(chunks):
    got_r = got_a = ""
    last = None
    async for c in chunks:
        r, a = extract_deltas(c)
        got_r, got_a, last = got_r + r, got_a + a, c
    return got_r, got_a, last


# -- invoke -----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_invoke_blocked_prompt_returns_refusal_without_calling_the_model(style):
    guard, _ = scripted_guard(latency_s=0.0)
    model = _model(Turn("t", "a"), style)
    out = guard_runnable(model, guard).invoke(f"make a {MARKER}")
    assert isinstance(out, AIMessage) and out.content == guard.config.refusal_message
    assert out.response_metadata[META_KEY]["stage"] == "prompt"
    assert model.calls == 0
    with pytest.raises(GuardrailViolation):
        GuardedRunnable(model, guard, on_block="raise").invoke(f"make a {MARKER}")
    assert model.calls == 0


@pytest.mark.parametrize("style", STYLES)
async def test_ainvoke_redacts_the_answer_as_the_same_type(style):
    guard, _ = scripted_guard(latency_s=0.0, **REDACT_RESPONSE)
    turn = Turn("Thinking it over.", f"Use the {MARKER} here.")
    model = _model(turn, style)
    out = await guard_runnable(model, guard).ainvoke("q")
    assert isinstance(out, AIMessage)
    reasoning, text = extract_deltas(out)
    assert text == guard.config.redact_placeholder and MARKER not in str(out.content)
    assert reasoning == turn["reasoning"]  # the reasoning passed its own check and is kept
    assert out.response_metadata[META_KEY]["action"] == "redact"
    assert isinstance(out.content, list) == (style == "blocks")  # same content shape


def test_invoke_blocks_harmful_reasoning_keeping_the_message_id():
    guard, _ = scripted_guard(latency_s=0.0)
    model = _model(Turn(f"the {MARKER} plan", "fine"), "reasoning_content")
    out = GuardedRunnable(model, guard).invoke("q")
    assert out.content == guard.config.refusal_message and MARKER not in str(out)
    assert out.response_metadata[META_KEY]["stage"] == "reasoning"
    assert out.id is not None and out.id.startswith("lc_run")  # the model's message id, kept


def test_invoke_benign_passes_through_and_composes():
    guard, _ = scripted_guard(latency_s=0.0)
    model = _model(Turn("thinking", "hello"), "blocks")
    g = GuardedRunnable(model, guard)
    out = g.invoke("q")
    assert extract_deltas(out) == ("thinking", "hello")
    assert META_KEY not in out.response_metadata
    assert (g | StrOutputParser()).invoke("q") == "hello"  # a Runnable like any other
    assert [extract_deltas(m) for m in g.batch(["a", "b"])] == [("thinking", "hello")] * 2


def test_chain_with_string_output_is_guarded_and_redacted():
    guard, engine = scripted_guard(latency_s=0.0, **REDACT_RESPONSE)
    prompt = ChatPromptTemplate.from_messages([("system", "be brief"), ("human", "{question}")])
    chain = prompt | _model(Turn("", f"a {MARKER} answer"), "reasoning_content") | StrOutputParser()
    guarded = guard_runnable(chain, guard)
    assert guarded.invoke({"question": "hello?"}) == guard.config.redact_placeholder
    assert any("Human user:\nhello?\n" in p for p in engine.prompts)  # the question was checked
    blocked = guarded.invoke({"question": f"a {MARKER}?"})
    assert blocked == guard.config.refusal_message
    chunks = list(guarded.stream({"question": "hi"}))
    assert all(isinstance(c, str) for c in chunks)
    # held: a stage that can redact holds back its detectors' longest match (issue 26), so nothing
    # of this short answer leaves before the REDACT; then only the redaction
    assert "".join(chunks) == guard.config.redact_placeholder and MARKER not in "".join(chunks)


# -- stream -----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_stream_stops_on_harmful_reasoning_within_the_reported_lag(style):
    guard, _ = scripted_guard(latency_s=0.01)
    turn = Turn(harmful_reasoning(), "Here it is.")
    model = _model(turn, style)
    g = GuardedRunnable(model, guard, check_every_tokens=8)
    got_r, got_a, last = _collect(g.stream("q"))
    st = g.last_stream.stats(Stage.REASONING)
    assert st.aborted and st.abort_offset >= marker_end(turn["reasoning"])
    assert approx_tokens(got_r) <= st.abort_offset + st.detection_lag_tokens
    assert turn["reasoning"].startswith(got_r)
    assert got_a == guard.config.refusal_message  # the stream ends with the refusal chunk
    assert isinstance(last, AIMessageChunk) and last.response_metadata[META_KEY]["stage"] == "reasoning"
    assert model.chunks_produced < chunk_count(turn)  # the source was closed: the model stopped


@pytest.mark.parametrize("style", STYLES)
async def test_astream_with_reasoning_hold_back_leaks_nothing(style):
    guard, _ = scripted_guard(latency_s=0.01)
    turn = Turn(harmful_reasoning(), "Here it is.")
    model = _model(turn, style)
    g = GuardedRunnable(model, guard, check_every_tokens=8, hold_back_reasoning=True)
    got_r, got_a, _ = await _acollect(g.astream("q"))
    st = g.last_stream.stats(Stage.REASONING)
    assert st.aborted
    assert MARKER not in got_r and turn["reasoning"].startswith(got_r)
    assert approx_tokens(got_r) < st.abort_offset  # nothing past a blocking prefix, at all
    assert got_a == guard.config.refusal_message
    assert model.chunks_produced < chunk_count(turn)


@pytest.mark.parametrize("style", STYLES)
def test_stream_holds_the_answer_until_checked(style):
    guard, _ = scripted_guard(latency_s=0.01)
    answer = filler(80) + f"then the {MARKER} step " + filler(80, 80)
    turn = Turn("Plan the reply.", answer)
    model = _model(turn, style)
    g = GuardedRunnable(model, guard, check_every_tokens=8)
    chunks = list(g.stream("q"))
    got_r, got_a, last = _collect(chunks)
    st = g.last_stream.stats(Stage.RESPONSE)
    assert st.aborted and g.last_stream.stop.stage is Stage.RESPONSE
    released = g.last_stream.released_text(Stage.RESPONSE)
    assert MARKER not in released and answer.startswith(released)
    assert approx_tokens(released) < st.abort_offset
    assert got_a == released + guard.config.refusal_message
    assert got_r == turn["reasoning"]


def test_stream_on_block_raise():
    guard, _ = scripted_guard(latency_s=0.01)
    model = _model(Turn(harmful_reasoning(), "x"))
    g = GuardedRunnable(model, guard, check_every_tokens=8, on_block="raise")
    with pytest.raises(GuardrailViolation):
        list(g.stream("q"))


def test_stream_blocked_prompt_yields_only_the_refusal():
    guard, _ = scripted_guard(latency_s=0.0)
    model = _model(Turn("t", "a"))
    chunks = list(GuardedRunnable(model, guard).stream(f"a {MARKER}?"))
    assert len(chunks) == 1 and chunks[0].content == guard.config.refusal_message
    assert model.calls == 0


@pytest.mark.parametrize("style", STYLES)
async def test_benign_streams_are_byte_identical(style):
    guard, _ = scripted_guard(latency_s=0.005)
    turn = Turn(filler(100) + "So:\n\n" + filler(20, 100), "The answer is " + filler(60) + "done.")
    model = _model(turn, style)
    g = GuardedRunnable(model, guard, check_every_tokens=8)
    got_r, got_a, _ = _collect(g.stream("q"))
    assert (got_r, got_a) == (turn["reasoning"], turn["answer"])
    assert g.last_stream.stop is None and g.last_stream.stats(Stage.RESPONSE).checks_run >= 2
    got_r, got_a, _ = await _acollect(g.astream("q"))
    assert (got_r, got_a) == (turn["reasoning"], turn["answer"])
    # merged chunks make the same message the bare model makes
    merged = None
    for c in g.stream("q"):
        merged = c if merged is None else merged + c
    assert extract_deltas(merged) == extract_deltas(model.invoke("q"))


async def test_astream_redacted_answer_ends_with_the_redaction():
    guard, _ = scripted_guard(latency_s=0.0, **REDACT_RESPONSE)
    model = _model(Turn("", f"a {MARKER} in short"), "reasoning_content")
    g = GuardedRunnable(model, guard, check_every_tokens=1000)
    _, got_a, _ = await _acollect(g.astream("q"))
    d = g.last_stream.stop
    assert d is not None and d.action is Action.REDACT
    # a stage that can redact holds back its detectors' longest match (issue 26): nothing of this
    # short answer left before the REDACT, and nothing after it but the redaction
    assert got_a == guard.config.redact_placeholder


@pytest.mark.parametrize("style", STYLES)
async def test_answer_waits_for_the_reasoning_final_check(style):
    # No check lands mid-reasoning (interval 1000); the gate at the first answer token does.
    guard, _ = scripted_guard(latency_s=0.02)
    turn = Turn(f"a short {MARKER} plan", "Sure, " + filler(30))
    model = _model(turn, style)
    g = GuardedRunnable(model, guard, check_every_tokens=1000)
    got_r, got_a, _ = await _acollect(g.astream("q"))
    assert got_r == turn["reasoning"]  # reasoning streams first (not held by default)
    assert got_a == guard.config.refusal_message  # not one answer token
    assert g.last_stream.stop.stage is Stage.REASONING
    # Without the gate (and without answer hold-back) the answer streams before the verdict.
    ungated = GuardedRunnable(model, guard, check_every_tokens=1000, gate_answer=False, hold_back_answer=False)
    got_r, got_a, _ = _collect(ungated.stream("q"))
    assert got_a.startswith(turn["answer"]) and got_a.endswith(guard.config.refusal_message)


# -- tool calls -------------------------------------------------------------------------------


def _tool_turn(q: str) -> Turn:
    return Turn("plan the call.", "", [{"name": "lookup", "args": {"q": q}, "id": "c1"}])


@pytest.mark.parametrize("style", STYLES)
async def test_invoke_refuses_harmful_tool_call_arguments(style):
    guard, _ = scripted_guard(latency_s=0.0)
    out = GuardedRunnable(_model(_tool_turn(f"the {MARKER} recipe"), style), guard).invoke("q")
    assert isinstance(out, AIMessage) and out.content == guard.config.refusal_message and not out.tool_calls
    out = await GuardedRunnable(_model(_tool_turn("weather"), style), guard).ainvoke("q")
    assert out.tool_calls and out.tool_calls[0]["args"] == {"q": "weather"}


@pytest.mark.parametrize("style", STYLES)
async def test_stream_holds_tool_call_chunks_until_checked(style):
    guard, _ = scripted_guard(latency_s=0.0)
    chunks = list(GuardedRunnable(_model(_tool_turn(f"the {MARKER} recipe"), style), guard).stream("q"))
    assert not any(getattr(c, "tool_call_chunks", None) for c in chunks)  # never released
    assert extract_deltas(chunks[-1])[1] == guard.config.refusal_message
    chunks = [c async for c in GuardedRunnable(_model(_tool_turn("weather"), style), guard).astream("q")]
    sent = [tc for c in chunks for tc in (getattr(c, "tool_call_chunks", None) or [])]
    assert sent and sent[0]["name"] == "lookup" and "weather" in sent[0]["args"]


async def test_prompt_redaction_blocks_since_a_wrapper_cannot_rewrite_the_input():
    cfg = {"stages": {"prompt": {"guards": ["GuardReasoner-1B"], "flagged_action": "redact"}}}
    guard, _ = scripted_guard(latency_s=0.0, **cfg)
    model = _model(Turn("fine", "done"))
    out = GuardedRunnable(model, guard).invoke(f"my secret is {MARKER}")
    assert out.content == guard.config.refusal_message and model.calls == 0
    chunks = [c async for c in GuardedRunnable(model, guard).astream(f"my secret is {MARKER}")]
    assert extract_deltas(chunks[-1])[1] == guard.config.refusal_message and model.calls == 0


@pytest.mark.parametrize("use_async", [False, True])
async def test_responses_reasoning_summaries_are_judged_and_unknown_shapes_fail_closed(use_async):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel

    async def run(guard, msg):
        g = GuardedRunnable(GenericFakeChatModel(messages=iter([msg])), guard)
        return await g.ainvoke("q") if use_async else g.invoke("q")

    guard, _ = scripted_guard(latency_s=0.0)
    summary = {"type": "reasoning", "summary": [{"type": "summary_text", "text": f"plan the {MARKER}"}]}
    out = await run(guard, AIMessage(content=[summary, {"type": "text", "text": "ok"}]))
    assert out.content == guard.config.refusal_message and out.response_metadata[META_KEY]["stage"] == "reasoning"
    odd = AIMessage(content=[{"type": "reasoning", "reasoning": {"opaque": 1}}, {"type": "text", "text": "ok"}])
    out = await run(guard, odd)  # reasoning nobody can read: the fail mode (closed), not "no reasoning"
    assert out.content == guard.config.refusal_message and "bad_input" in out.response_metadata[META_KEY]["reason"]
    opened, _ = scripted_guard(latency_s=0.0, fail_mode="open")
    assert (await run(opened, odd)).content == odd.content
