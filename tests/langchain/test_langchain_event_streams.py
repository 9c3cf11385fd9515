"""Every LangChain streaming API shows only checked text (issue 19).

A matrix of {GuardedRunnable, create_agent + GuardMiddleware} x {every way LangChain hands out a
run's output: stream / astream, astream_events v1 / v2 / v3, astream_log, stream_mode messages /
updates / values, a wrapper inside a chain, a wrapper around a chain, an invoke inside an event
stream} x {short harmful answer, long harmful answer, harmful reasoning (streamed, and held back),
benign}. The consumer's whole output (every event, chunk, patch and snapshot, as ``repr``) is
scanned for text no check covered. Benign text must stream: the first answer text reaches the
consumer while the model is still generating, and the final text is complete.

Scripted guard (the marker word is harmful), checks every 8 tokens, 20 ms per check; the model
streams one word per chunk every 3 ms, so a check lands every ~24 ms of stream.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_support import MARKER, ScriptedReasoningChatModel, Turn, chunk_count, filler, scripted_guard

from guardrails_plugin import Stage
from guardrails_plugin.langchain import GuardMiddleware, guard_runnable
from guardrails_plugin.stream.extract import extract_deltas

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::langchain_core._api.deprecation.LangChainDeprecationWarning"),
]
warnings.filterwarnings("ignore", message="The v3 streaming protocol")


def _answer_words(n: int) -> str:
    return "".join(f"zq{i} " for i in range(n))  # "zq": a token that appears nowhere else


TAIL = "step149"  # the last reasoning word of the harmful reasoning row: far past any detection lag
SCENARIOS: dict[str, Turn] = {
    "short_harmful": Turn("", f"Sure: {MARKER}."),
    "long_harmful": Turn("", "Here goes. " + filler(30) + f"the {MARKER} recipe " + filler(30, 30)),
    "harmful_reasoning": Turn(filler(30) + f"now the {MARKER} part " + filler(120, 30), "The final zq answer."),
    "held_reasoning": Turn(filler(30) + f"now the {MARKER} part " + filler(120, 30), "The final zq answer."),
    "benign": Turn("Let me think. " + filler(10), "Hello there. " + _answer_words(60)),
}
CONFIG = {"stages": {"reasoning": {"check_every_tokens": 8}, "response": {"check_every_tokens": 8}}}
HELD = {"stages": {"reasoning": {"check_every_tokens": 8, "hold_back": True}, "response": {"check_every_tokens": 8}}}


class Seen:
    """What one consumer got: every item as text, and the model's progress when answer text first showed."""

    def __init__(self, model: ScriptedReasoningChatModel):
        self.model = model
        self.items: list[str] = []
        self.first_answer_at: int | None = None
        self.answer = ""  # the answer text of a stream of chunks (stream / astream / messages mode)

    def add(self, item: Any) -> None:
        chunk = item[0] if isinstance(item, tuple) and len(item) == 2 else item  # messages mode: (chunk, metadata)
        if isinstance(chunk, AIMessageChunk):
            self.answer += extract_deltas(chunk)[1]
        elif isinstance(item, str):
            self.answer += item
        text = repr(item)
        self.items.append(text)
        if self.first_answer_at is None and "zq0" in text:
            self.first_answer_at = self.model.chunks_produced

    @property
    def text(self) -> str:
        return "\n".join(self.items)


# -- consumers: GuardedRunnable ----------------------------------------------------------------------------


def _wrapped(model, guard, how):
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    if how == "inner_chain_v2":  # the wrapper around a whole chain: the chain's own outputs are inner runs
        return guard_runnable(prompt | model, guard, input_key="q")
    if how == "inner_parser_v2":  # ... ending in a parser: a chain run whose stream is strings
        return guard_runnable(prompt | model | StrOutputParser(), guard, input_key="q")
    gr = guard_runnable(model, guard)
    if how == "outer_chain_v2":  # the wrapper inside a chain, not the root of the event stream
        return prompt | gr | StrOutputParser()
    return gr


async def _runnable(seen: Seen, runnable, how: str) -> None:
    inp: Any = {"q": "tell me"} if how in ("inner_chain_v2", "inner_parser_v2", "outer_chain_v2") else "tell me"
    if how == "stream":
        for c in runnable.stream(inp):
            seen.add(c)
    elif how == "astream":
        async for c in runnable.astream(inp):
            seen.add(c)
    elif how in ("v1", "v2", "inner_chain_v2", "inner_parser_v2", "outer_chain_v2"):
        async for e in runnable.astream_events(inp, version="v1" if how == "v1" else "v2"):
            seen.add(e)
    elif how == "astream_log":
        async for p in runnable.astream_log(inp):
            seen.add(p)
    elif how == "ainvoke_in_v2":  # an ainvoke inside a traced step: its tokens must still be gated
        async def call(x, config):
            return await runnable.ainvoke(x, config)

        async for e in RunnableLambda(call).astream_events(inp, version="v2"):
            seen.add(e)
    else:
        raise AssertionError(how)


RUNNABLE_WAYS = ["stream", "astream", "v1", "v2", "astream_log", "outer_chain_v2", "inner_chain_v2", "inner_parser_v2",
                 "ainvoke_in_v2"]


# -- consumers: agents -----------------------------------------------------------------------------------


async def _agent(seen: Seen, agent, how: str) -> None:
    inp = {"messages": [HumanMessage("tell me")]}
    if how in ("messages", "updates", "values"):
        for item in agent.stream(inp, stream_mode=how):
            seen.add(item)
    elif how in ("amessages", "aupdates", "avalues"):
        async for item in agent.astream(inp, stream_mode=how[1:]):
            seen.add(item)
    elif how == "all_modes":
        for item in agent.stream(inp, stream_mode=["messages", "updates", "values", "debug", "tasks"]):
            seen.add(item)
    elif how == "v2":
        async for e in agent.astream_events(inp, version="v2"):
            seen.add(e)
    elif how == "v3":
        for e in agent.stream_events(inp, version="v3"):
            seen.add(e)
    elif how == "av3":
        run = await agent.astream_events(inp, version="v3")
        async for e in run:
            seen.add(e)
    else:
        raise AssertionError(how)


AGENT_WAYS = ["messages", "amessages", "updates", "aupdates", "values", "avalues", "all_modes", "v2", "v3", "av3"]
#: ways that hand out tokens as they come (the others show whole node outputs / snapshots)
TOKEN_WAYS = {"stream", "astream", "v1", "v2", "astream_log", "outer_chain_v2", "inner_chain_v2", "inner_parser_v2",
              "ainvoke_in_v2",
              "messages", "amessages", "all_modes", "v3", "av3"}


# -- the assertions, per scenario ------------------------------------------------------------------------


def _check(scenario: str, how: str, seen: Seen, turn: Turn, model, guard, last_stream) -> None:
    out = seen.text
    refusal = guard.config.refusal_message
    if scenario in ("short_harmful", "long_harmful", "held_reasoning"):
        assert MARKER not in out, f"unchecked text reached the consumer: {_around(out, MARKER)}"
        assert refusal in out
    elif scenario == "harmful_reasoning":  # reasoning streams (no hold-back): cut within the detection lag
        assert TAIL not in out and "final zq answer" not in out, _around(out, TAIL)
        assert refusal in out
        if how in TOKEN_WAYS:  # streamed: the lag is reported (a whole message judged at once has none)
            st = last_stream.stats(Stage.REASONING)
            assert st is not None and st.aborted and st.detection_lag_tokens is not None
    else:
        assert refusal not in out
        assert turn["answer"].strip() in out or seen.answer == turn["answer"], "the answer is not complete"
        if how in TOKEN_WAYS:  # streamed: answer text showed while the model was still generating
            assert seen.first_answer_at is not None and seen.first_answer_at < chunk_count(turn), (
                f"no answer text before the model finished ({seen.first_answer_at} of {chunk_count(turn)} chunks)")


def _around(text: str, needle: str) -> str:
    i = text.find(needle)
    return text[max(0, i - 300): i + 100] if i >= 0 else ""


#: StrOutputParser drops the reasoning (the wrapper guards the output it is given): no reasoning cells there
RUNNABLE_CELLS = [(how, scenario) for how in RUNNABLE_WAYS for scenario in SCENARIOS
                  if not (how == "inner_parser_v2" and "reasoning" in scenario)]


@pytest.mark.parametrize(("how", "scenario"), RUNNABLE_CELLS)
async def test_guarded_runnable_shows_only_checked_text(how, scenario):
    turn = SCENARIOS[scenario]
    guard, _ = scripted_guard(latency_s=0.02, **(HELD if scenario == "held_reasoning" else CONFIG))
    model = ScriptedReasoningChatModel(turns=[turn], token_delay_s=0.003)
    runnable = _wrapped(model, guard, how)
    seen = Seen(model)
    await _runnable(seen, runnable, how)
    gr = runnable if hasattr(runnable, "last_stream") else next(s for s in runnable.steps if hasattr(s, "last_stream"))
    _check(scenario, how, seen, turn, model, guard, gr.last_stream)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("how", AGENT_WAYS)
async def test_agent_shows_only_checked_text(how, scenario):
    turn = SCENARIOS[scenario]
    guard, _ = scripted_guard(latency_s=0.02, **(HELD if scenario == "held_reasoning" else CONFIG))
    model = ScriptedReasoningChatModel(turns=[turn], token_delay_s=0.003)
    mw = GuardMiddleware(guard)
    agent = create_agent(model, tools=[], middleware=[mw])
    seen = Seen(model)
    await _agent(seen, agent, how)
    _check(scenario, how, seen, turn, model, guard, mw.last_stream)


# -- tracers: the inner run is recorded, with checked content unless the user opts in --------------------


class Recorder(BaseCallbackHandler):
    """A tracer-like user handler: records every model run's start, tokens and end."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, str]] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kw):
        self.events.append(("start", run_id, str(parent_run_id)))

    def on_llm_new_token(self, token, *, run_id, chunk=None, **kw):
        self.events.append(("token", run_id, repr(chunk)))

    def on_llm_end(self, response, *, run_id, **kw):
        self.events.append(("end", run_id, repr(response)))

    def on_llm_error(self, error, *, run_id, **kw):
        self.events.append(("error", run_id, repr(error)))


@pytest.mark.parametrize("trace_unchecked", [False, True])
@pytest.mark.parametrize("scenario", ["long_harmful", "benign"])
async def test_tracers_record_the_inner_run_with_checked_content_unless_asked(scenario, trace_unchecked):
    turn = SCENARIOS[scenario]
    guard, _ = scripted_guard(latency_s=0.02, **CONFIG)
    model = ScriptedReasoningChatModel(turns=[turn], token_delay_s=0.003)
    rec = Recorder()
    gr = guard_runnable(model, guard, trace_unchecked=trace_unchecked)
    async for _ in gr.astream("tell me", {"callbacks": [rec]}):
        pass
    starts = [(run, parent) for kind, run, parent in rec.events if kind == "start"]
    assert len(starts) == 2 and starts[1][1] == str(starts[0][0])  # the wrapper's run, the model's inside it
    inner = starts[1][0]
    inner_events = [(kind, text) for kind, run, text in rec.events if run == inner]
    if scenario == "benign":  # passed: the inner run ends as it did, with the whole answer
        assert inner_events[-1][0] == "end" and "zq59" in inner_events[-1][1]
        assert any(k == "token" for k, _ in inner_events) == trace_unchecked
    elif trace_unchecked:  # opted in: the trace holds what the model wrote
        assert MARKER in repr(inner_events)
    else:  # stopped: no token, no output, an error naming the guard's decision
        assert MARKER not in repr(rec.events)
        assert [k for k, _ in inner_events] == ["start", "error"] and "GuardrailViolation" in inner_events[-1][1]
    assert MARKER not in repr([e for e in rec.events if e[1] != inner])  # the wrapper's own run: checked text only


@pytest.mark.parametrize("how", ["messages", "amessages", "updates", "aupdates"])
async def test_after_model_reuses_the_model_calls_verdicts(how):
    guard, engine = scripted_guard(latency_s=0.0, **CONFIG)
    model = ScriptedReasoningChatModel(turns=[SCENARIOS["benign"]], token_delay_s=0.0)
    mw = GuardMiddleware(guard)
    await _agent(Seen(model), create_agent(model, tools=[], middleware=[mw]), how)
    assert len(engine.prompts) >= 3  # the prompt, the reasoning and the answer were judged ...
    assert len(set(engine.prompts)) == len(engine.prompts)  # ... and nothing twice (after_model reused the verdicts)


def test_the_query_of_reasoning_and_answer_checks_is_the_users_message():
    from guardrails_plugin.langchain._common import query_of

    blocks = HumanMessage(content=[{"type": "text", "text": "in blocks"}])
    assert [query_of([m]) for m in (HumanMessage("as a message"), blocks, ("user", "a tuple"),
                                      {"role": "user", "content": "a dict"})] == [
        "as a message", "in blocks", "a tuple", "a dict"]
