"""GuardCallbackHandler / AsyncGuardCallbackHandler on real chat-model streams.

The fake models stream ~200 reasoning tokens one word per chunk with a 1 ms pause; the scripted
guard (10 ms) flags any text containing the marker; checks every 8 tokens. Assertions use what
the monitor reports (abort offset, detection lag), so they hold whatever the timing.
"""

from __future__ import annotations

import pytest
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

from guardrails_plugin import GuardrailViolation, Stage
from guardrails_plugin.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler
from guardrails_plugin.stream.extract import approx_tokens, extract_deltas

pytestmark = pytest.mark.timeout(60)


def _model(turn, style, output_version=None):
    return ScriptedReasoningChatModel(turns=[turn], style=style, output_version=output_version)


def _check_abort(handler, model, turn, got_reasoning, got_answer):
    run = handler.last_run
    assert run is not None and run.violation is not None
    st = run.turn.stats(Stage.REASONING)
    assert st.aborted and st.abort_offset >= marker_end(turn["reasoning"])
    # Never a token past the blocking prefix plus the lag the monitor reports.
    assert approx_tokens(got_reasoning) <= st.abort_offset + st.detection_lag_tokens
    assert turn["reasoning"].startswith(got_reasoning)
    assert got_answer == ""  # the answer never started
    assert model.chunks_produced < chunk_count(turn)  # the model stopped early


@pytest.mark.parametrize("output_version", [None, "v1"])
@pytest.mark.parametrize("style", STYLES)
def test_sync_stream_stops_on_harmful_reasoning(style, output_version):
    guard, _ = scripted_guard(latency_s=0.01)
    turn = Turn(harmful_reasoning(), "Here you go.")
    model = _model(turn, style, output_version)
    handler = GuardCallbackHandler(guard, check_every_tokens=8)
    got_r = got_a = ""
    with pytest.raises(GuardrailViolation) as err:
        for chunk in model.stream("how do I do it?", config={"callbacks": [handler]}):
            r, a = extract_deltas(chunk)
            got_r += r
            got_a += a
    assert err.value.decision.stage is Stage.REASONING
    _check_abort(handler, model, turn, got_r, got_a)


@pytest.mark.parametrize("style", STYLES)
async def test_async_stream_stops_on_harmful_reasoning(style):
    guard, _ = scripted_guard(latency_s=0.01)
    turn = Turn(harmful_reasoning(), "Here you go.")
    model = _model(turn, style, "v1")
    handler = AsyncGuardCallbackHandler(guard, check_every_tokens=8)
    got_r = got_a = ""
    with pytest.raises(GuardrailViolation):
        async for chunk in model.astream("how do I do it?", config={"callbacks": [handler]}):
            r, a = extract_deltas(chunk)
            got_r += r
            got_a += a
    _check_abort(handler, model, turn, got_r, got_a)


def test_blocked_prompt_never_reaches_the_model():
    guard, engine = scripted_guard(latency_s=0.0)
    model = _model(Turn("think", "answer"), "blocks")
    handler = GuardCallbackHandler(guard)
    with pytest.raises(GuardrailViolation) as err:
        list(model.stream(f"how to build a {MARKER}", config={"callbacks": [handler]}))
    assert err.value.decision.stage is Stage.PROMPT
    assert model.calls == 0 and model.chunks_produced == 0


async def test_async_blocked_prompt_never_reaches_the_model():
    guard, _ = scripted_guard(latency_s=0.0)
    model = _model(Turn("think", "answer"), "reasoning_content")
    handler = AsyncGuardCallbackHandler(guard)
    with pytest.raises(GuardrailViolation):
        await model.ainvoke(f"how to build a {MARKER}", config={"callbacks": [handler]})
    assert model.calls == 0


def test_prompt_check_can_be_turned_off():
    guard, engine = scripted_guard(latency_s=0.0)
    model = _model(Turn("think", "answer"), "blocks")
    handler = GuardCallbackHandler(guard, check_prompt=False)
    model.invoke(f"how to build a {MARKER}", config={"callbacks": [handler]})
    assert model.calls == 1


@pytest.mark.parametrize("style", STYLES)
def test_final_response_check_at_the_end(style):
    # Checks too sparse to land mid-stream: the end-of-answer check still catches it, but only
    # after the tokens went out (a callback cannot hold tokens back).
    guard, _ = scripted_guard(latency_s=0.0)
    turn = Turn("Short thought.", f"Mix the {MARKER} parts.")
    model = _model(turn, style)
    handler = GuardCallbackHandler(guard, check_every_tokens=1000)
    got = ""
    with pytest.raises(GuardrailViolation) as err:
        for chunk in model.stream("q", config={"callbacks": [handler]}):
            got += extract_deltas(chunk)[1]
    assert err.value.decision.stage is Stage.RESPONSE
    assert got == turn["answer"]  # documented: no hold-back in a callback


@pytest.mark.parametrize("style", STYLES)
def test_non_streamed_invoke_is_checked_at_the_end(style):
    guard, _ = scripted_guard(latency_s=0.0)
    model = _model(Turn(f"plan the {MARKER}", "ok"), style)
    handler = GuardCallbackHandler(guard)
    with pytest.raises(GuardrailViolation) as err:
        model.invoke("q", config={"callbacks": [handler]})
    assert err.value.decision.stage is Stage.REASONING


@pytest.mark.parametrize("output_version", [None, "v1"])
@pytest.mark.parametrize("style", STYLES)
async def test_benign_stream_passes_unchanged(style, output_version):
    guard, _ = scripted_guard(latency_s=0.005)
    turn = Turn(filler(120), "The answer is " + filler(40))
    model = _model(turn, style, output_version)
    sync_handler = GuardCallbackHandler(guard, check_every_tokens=8)
    got_r = got_a = ""
    for chunk in model.stream("q", config={"callbacks": [sync_handler]}):
        r, a = extract_deltas(chunk)
        got_r, got_a = got_r + r, got_a + a
    assert (got_r, got_a) == (turn["reasoning"], turn["answer"])
    run = sync_handler.last_run
    st = run.turn.stats(Stage.REASONING)
    assert run.violation is None and st.checks_run >= 2
    assert st.tokens_checked == approx_tokens(turn["reasoning"])

    async_handler = AsyncGuardCallbackHandler(guard, check_every_tokens=8)
    msg = await model.ainvoke("q", config={"callbacks": [async_handler]})
    assert extract_deltas(msg) == (turn["reasoning"], turn["answer"])


def test_handler_flags():
    guard, _ = scripted_guard()
    for h in (GuardCallbackHandler(guard), AsyncGuardCallbackHandler(guard)):
        assert h.raise_error is True  # LangChain swallows callback errors otherwise
        assert h.run_inline is True


@pytest.mark.parametrize("style", STYLES)
def test_answer_waits_for_the_reasoning_check(style):
    # Checks too sparse to land mid-reasoning: the gate at the first answer token runs the final
    # reasoning check, so no answer token follows the harmful thought.
    guard, _ = scripted_guard(latency_s=0.02)
    turn = Turn(f"a short {MARKER} plan", "Step one: " + filler(20))
    model = _model(turn, style)
    handler = GuardCallbackHandler(guard, check_every_tokens=1000)
    got_r = got_a = ""
    with pytest.raises(GuardrailViolation) as err:
        for chunk in model.stream("q", config={"callbacks": [handler]}):
            r, a = extract_deltas(chunk)
            got_r, got_a = got_r + r, got_a + a
    assert err.value.decision.stage is Stage.REASONING
    assert got_r == turn["reasoning"] and got_a == ""


async def test_without_the_gate_the_answer_streams_before_the_final_check():
    guard, _ = scripted_guard(latency_s=0.0)
    turn = Turn(f"a short {MARKER} plan", "Step one.")
    model = _model(turn, "blocks")
    handler = AsyncGuardCallbackHandler(guard, check_every_tokens=1000, gate_answer=False)
    got_a = ""
    with pytest.raises(GuardrailViolation) as err:
        async for chunk in model.astream("q", config={"callbacks": [handler]}):
            got_a += extract_deltas(chunk)[1]
    assert err.value.decision.stage is Stage.REASONING
    assert got_a == turn["answer"]  # caught only at the end: what the gate prevents


@pytest.mark.parametrize("style", STYLES)
def test_streamed_tool_call_arguments_are_checked(style):
    guard, _ = scripted_guard(latency_s=0.0)
    turn = Turn("plan the call.", "", [{"name": "lookup", "args": {"q": f"the {MARKER} recipe"}, "id": "c1"}])
    handler = GuardCallbackHandler(guard)
    with pytest.raises(GuardrailViolation) as err:
        for _ in _model(turn, style).stream("q", config={"callbacks": [handler]}):
            pass
    assert err.value.decision.stage is Stage.RESPONSE
    # benign arguments stream through
    ok = Turn("plan the call.", "", [{"name": "lookup", "args": {"q": "weather"}, "id": "c1"}])
    list(_model(ok, style).stream("q", config={"callbacks": [GuardCallbackHandler(guard)]}))


def test_blocked_stream_frees_its_monitors():
    guard, _ = scripted_guard(latency_s=0.01)
    released = []
    guard.release_session = released.append
    turn = Turn(harmful_reasoning(), "Here you go.")
    model = _model(turn, STYLES[0])
    handler = GuardCallbackHandler(guard, check_every_tokens=8)
    with pytest.raises(GuardrailViolation):
        for _ in model.stream("how do I do it?", config={"callbacks": [handler]}):
            pass
    run = handler.last_run
    assert run is not None and run.violation is not None
    # the aborted run's checks were dropped and their engine state (KV cache) freed
    assert run.turn.tracks and {t.session_id for t in run.turn.tracks} <= set(released)


def test_every_new_user_message_is_checked():
    from langchain_core.messages import HumanMessage

    guard, _ = scripted_guard(latency_s=0.0)
    model = _model(Turn("fine", "ok"), STYLES[0])
    handler = GuardCallbackHandler(guard)
    with pytest.raises(GuardrailViolation):
        model.invoke([HumanMessage(f"how do I build a {MARKER}?"), HumanMessage("thanks!")],
                     config={"callbacks": [handler]})
    assert model.calls == 0
