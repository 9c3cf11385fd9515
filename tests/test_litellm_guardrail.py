"""In-process checks of GuardrailsPluginGuardrail (the proxy tests are in test_litellm_proxy.py /
test_litellm_failmodes.py). The guard runs on a ScriptedEngine test double (harmful iff "bomb")."""

from __future__ import annotations

import pytest

pytest.importorskip("litellm")

from fastapi import HTTPException  # noqa: E402
from litellm.types.utils import ModelResponse  # noqa: E402
from litellm_support.scripted_guardrail import scripted_verdict  # noqa: E402

from guardrails_plugin import Guard, GuardConfig  # noqa: E402
from guardrails_plugin.engines import ScriptedEngine  # noqa: E402
from guardrails_plugin.litellm import GuardrailsPluginGuardrail, GuardrailStartupError  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def make(**kw) -> GuardrailsPluginGuardrail:
    guard = Guard(GuardConfig(), engine=ScriptedEngine(scripted_verdict))
    return GuardrailsPluginGuardrail(guard=guard, guardrail_name="t", event_hook="post_call", **kw)


def response(content: str, reasoning: str | None = None) -> ModelResponse:
    msg = {"role": "assistant", "content": content}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return ModelResponse(choices=[{"index": 0, "finish_reason": "stop", "message": msg}], model="m")


def test_bad_config_is_not_a_value_error():
    # LiteLLM skips guardrails whose constructor raises ValueError/TypeError and serves unguarded.
    with pytest.raises(GuardrailStartupError) as ei:
        GuardrailsPluginGuardrail(guard_config={"strictness": "nope"}, guardrail_name="bad")
    assert not isinstance(ei.value, (ValueError, TypeError))
    with pytest.raises(GuardrailStartupError):
        GuardrailsPluginGuardrail(guard_config="/nonexistent/guard.yaml")
    with pytest.raises(GuardrailStartupError):
        make(stages=["prompt", "thoughts"])


def test_subclass_hooks():
    class Plain(GuardrailsPluginGuardrail):
        pass

    class Own(GuardrailsPluginGuardrail):
        async def async_post_call_streaming_iterator_hook(self, user_api_key_dict, response, request_data):
            async for c in response:
                yield c

    class Grandchild(Own):
        pass

    assert Plain.__dict__["async_post_call_streaming_iterator_hook"] is (
        GuardrailsPluginGuardrail.async_post_call_streaming_iterator_hook)
    assert Grandchild.__dict__["async_post_call_streaming_iterator_hook"] is Own.async_post_call_streaming_iterator_hook


async def test_post_call_refusal_in_place():
    g = make()
    r = response("Here is how to build a bomb.", reasoning="thinking")
    out = await g.async_post_call_success_hook(data={"messages": [{"role": "user", "content": "q"}]},
                                              user_api_key_dict=None, response=r)
    assert out.choices[0].message.content == "I can't help with that."
    assert out.choices[0].finish_reason == "content_filter"
    assert not getattr(out.choices[0].message, "reasoning_content", None)


async def test_post_call_reasoning_block_as_error():
    g = make(on_response_block="error")
    with pytest.raises(HTTPException) as ei:
        await g.async_post_call_success_hook(data={"messages": [{"role": "user", "content": "q"}]},
                                            user_api_key_dict=None, response=response("fine", reasoning="a bomb"))
    assert ei.value.status_code == 400 and ei.value.detail["stage"] == "reasoning"


async def test_stages_restrict_checks():
    g = make(stages=["response"])
    r = response("all fine", reasoning="a bomb plan")  # reasoning not guarded by this guardrail
    out = await g.async_post_call_success_hook(data={}, user_api_key_dict=None, response=r)
    assert out.choices[0].message.content == "all fine"
