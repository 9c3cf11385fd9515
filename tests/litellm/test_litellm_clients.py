"""What each client shows when the guardrail refuses an answer, through a REAL ``litellm --config``
proxy (issue 24, finding 7): the litellm SDK, langchain-openai (Chat Completions and Responses API)
and the OpenAI Agents SDK (its Responses model and its Chat Completions model), streamed and not.

The refusal shapes (integrations/litellm/README.md, "What clients see"): chat and completions end
with the refusal as the content and ``finish_reason: "content_filter"``; Responses with a refusal
message item, ``status: "incomplete"`` and ``incomplete_details.reason: "content_filter"``. Each
test checks that the client can tell a refusal from an answer, never sees the harmful text, and
that benign answers come through as the upstream sent them. One proxy for the module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("litellm")
agents = pytest.importorskip("agents")
pytest.importorskip("langchain_openai")

import litellm  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from litellm_support.proxy import MASTER_KEY, start_proxy, start_upstream, write_config  # noqa: E402
from litellm_support.upstream import script  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

pytestmark = pytest.mark.timeout(180)

REFUSAL = "I can't help with that."
BENIGN = "".join(script("benign").content)
TAGS = ("harmful-answer", "benign")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory):
    wd: Path = tmp_path_factory.mktemp("clients")
    up = start_upstream(wd)
    cfg = write_config(wd, [
        {"model_name": "chat", "litellm_params": {"model": "hosted_vllm/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}},
        {"model_name": "oai", "litellm_params": {"model": "openai/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}},
    ], [{"guardrail_name": "gp", "litellm_params": {
        "guardrail": "scripted_guardrail.ScriptedGuardrail", "mode": ["pre_call", "post_call"], "default_on": True}}])
    proxy = start_proxy(cfg, wd)
    try:
        yield proxy.base_url
    finally:
        proxy.stop()
        up.stop()


def _expect(tag: str, text: str) -> None:
    assert "bomb" not in text
    assert (REFUSAL in text) if tag == "harmful-answer" else (text == BENIGN), text


# -- the litellm SDK ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", (False, True))
@pytest.mark.parametrize("tag", TAGS)
def test_litellm_sdk_chat_sees_content_filter(base_url, tag, stream):
    kw = {"model": "litellm_proxy/chat", "api_base": base_url, "api_key": MASTER_KEY,
          "messages": [{"role": "user", "content": f"[{tag}] q"}]}
    if stream:
        chunks = list(litellm.completion(stream=True, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason][-1]
    else:
        r = litellm.completion(**kw)
        text, finish = r.choices[0].message.content, r.choices[0].finish_reason
    assert finish == ("content_filter" if tag == "harmful-answer" else "stop")
    if stream and tag == "harmful-answer":  # what was checked before the stop, then the refusal
        assert text.endswith(REFUSAL) and "bomb" not in text
    else:
        _expect(tag, text)


@pytest.mark.parametrize("stream", (False, True))
@pytest.mark.parametrize("tag", TAGS)
def test_litellm_sdk_responses_sees_status_incomplete(base_url, tag, stream):
    kw = {"model": "litellm_proxy/oai", "api_base": base_url, "api_key": MASTER_KEY, "input": f"[{tag}] q"}
    if stream:
        events = list(litellm.responses(stream=True, **kw))
        final = events[-1].response  # the SDK types this last event response.completed, whatever came
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    else:
        final = litellm.responses(**kw)
        text = "".join(p.text for item in final.output if item.type == "message" for p in item.content)
    refused = tag == "harmful-answer"
    assert final.status == ("incomplete" if refused else "completed")
    assert (final.incomplete_details.reason == "content_filter") if refused else final.incomplete_details is None
    if stream and refused:
        assert text.endswith(REFUSAL) and "bomb" not in text
    else:
        _expect(tag, text)


# -- langchain-openai ---------------------------------------------------------------------------------
def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


@pytest.mark.parametrize("stream", (False, True))
@pytest.mark.parametrize("responses_api", (False, True))
@pytest.mark.parametrize("tag", TAGS)
def test_langchain_openai_sees_the_refusal(base_url, tag, responses_api, stream):
    m = ChatOpenAI(model="oai" if responses_api else "chat", base_url=base_url + "/v1", api_key=MASTER_KEY,
                   use_responses_api=responses_api, max_retries=0)
    if stream:
        chunks = list(m.stream(f"[{tag}] q"))
        msg = chunks[0]
        for c in chunks[1:]:
            msg = msg + c
    else:
        msg = m.invoke(f"[{tag}] q")
    text, meta = _text(msg.content), msg.response_metadata
    refused = tag == "harmful-answer"
    if responses_api:
        assert meta.get("status") == ("incomplete" if refused else "completed"), meta
        if refused:
            assert meta["incomplete_details"] == {"reason": "content_filter"}
    else:
        assert meta["finish_reason"] == ("content_filter" if refused else "stop")
    if stream and refused:
        assert text.endswith(REFUSAL) and "bomb" not in text
    else:
        _expect(tag, text)


# -- the OpenAI Agents SDK ----------------------------------------------------------------------------
@pytest.mark.parametrize("stream", (False, True))
@pytest.mark.parametrize("kind", ("responses", "chat"))
@pytest.mark.parametrize("tag", TAGS)
async def test_openai_agents_sdk(base_url, tag, kind, stream):
    """Responses model: a refusal raises ModelBehaviorError naming content_filter (the SDK's own
    reading of status incomplete; the agent stops, no tool runs). Chat model: the refusal text is
    the final output."""
    agents.set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    model = (agents.OpenAIResponsesModel(model="oai", openai_client=client) if kind == "responses"
             else agents.OpenAIChatCompletionsModel(model="chat", openai_client=client))
    agent = agents.Agent(name="assistant", instructions="Be brief.", model=model)

    async def run() -> str:
        if not stream:
            return (await agents.Runner.run(agent, f"[{tag}] q")).final_output
        r = agents.Runner.run_streamed(agent, f"[{tag}] q")
        async for _ in r.stream_events():
            pass
        return r.final_output

    try:
        if kind == "responses" and tag == "harmful-answer":
            with pytest.raises(agents.exceptions.ModelBehaviorError, match="content_filter") as e:
                await run()
            assert "bomb" not in str(e.value)
            return
        out = await run()
    finally:
        await client.close()
    if stream and tag == "harmful-answer":
        assert out.endswith(REFUSAL) and "bomb" not in out
    else:
        _expect(tag, out)
