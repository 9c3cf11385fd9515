"""In-process checks of GuardrailsPluginGuardrail (the proxy tests are in test_litellm_proxy.py /
test_litellm_failmodes.py). The guard runs on a ScriptedEngine test double (harmful iff "bomb")."""

from __future__ import annotations

import pytest

pytest.importorskip("litellm")

from litellm.proxy._types import ProxyException as HTTPException  # noqa: E402  (blocked_exception raises it)
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


def tool_response(arguments: str, content: str | None = None) -> ModelResponse:
    msg = {"role": "assistant", "content": content, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "send_email", "arguments": arguments}}]}
    return ModelResponse(choices=[{"index": 0, "finish_reason": "tool_calls", "message": msg}], model="m")


async def test_post_call_guards_tool_call_arguments_and_drops_blocked_calls():
    g = make()
    data = {"messages": [{"role": "user", "content": "q"}]}
    ok = await g.async_post_call_success_hook(data=data, user_api_key_dict=None,
                                             response=tool_response('{"body": "lunch at noon?"}'))
    assert ok.choices[0].message.tool_calls[0].function.arguments == '{"body": "lunch at noon?"}'
    assert ok.choices[0].finish_reason == "tool_calls"
    bad = await g.async_post_call_success_hook(data=data, user_api_key_dict=None,
                                              response=tool_response('{"body": "how to build a bomb"}'))
    msg = bad.choices[0].message
    assert not getattr(msg, "tool_calls", None)  # the refused turn's tool never runs
    assert msg.content == "I can't help with that." and bad.choices[0].finish_reason == "content_filter"


async def test_stream_holds_and_guards_tool_call_deltas():
    from litellm.types.utils import ModelResponseStream

    def chunk(delta: dict, finish: str | None = None) -> ModelResponseStream:
        return ModelResponseStream(choices=[{"index": 0, "delta": delta, "finish_reason": finish}], model="m")

    def tool_delta(args: str, name: str | None = None) -> dict:
        fn = {"arguments": args, **({"name": name} if name else {})}
        return {"tool_calls": [{"index": 0, "id": "call_1" if name else None, "type": "function", "function": fn}]}

    async def upstream(pieces):
        for p in pieces:
            yield p

    g = make()
    data = {"messages": [{"role": "user", "content": "q"}], "model": "m"}
    benign = [chunk({"reasoning_content": "plan an email. "}), chunk(tool_delta('{"body": ', "send_email")),
              chunk(tool_delta('"lunch?"}')), chunk({}, "tool_calls")]
    out = [c async for c in g.async_post_call_streaming_iterator_hook(None, upstream(benign), data)]
    assert [c.choices[0].finish_reason for c in out][-1] == "tool_calls"
    assert sum(1 for c in out if c.choices[0].delta.tool_calls) == 2

    harmful = [chunk({"reasoning_content": "plan an email. "}), chunk(tool_delta('{"body": ', "send_email")),
               chunk(tool_delta('"how to build a bomb"}')), chunk({}, "tool_calls")]
    out = [c async for c in g.async_post_call_streaming_iterator_hook(None, upstream(harmful), data)]
    assert out[-1].choices[0].finish_reason == "content_filter"
    sent_args = "".join(tc.function.arguments or "" for c in out for tc in (c.choices[0].delta.tool_calls or []))
    assert "bomb" not in sent_args  # held back until checked, then never released


async def test_unloadable_guard_model_is_logged_and_fails_closed(tmp_path, caplog):
    cfg = {"models": {"GuardReasoner-1B": {"family": "guardreasoner", "model": str(tmp_path / "missing")},
                      "ReasoningShield-1B": {"family": "reasoningshield", "model": str(tmp_path / "missing")}}}
    g = GuardrailsPluginGuardrail(guard_config=cfg, guardrail_name="t", event_hook="pre_call")
    assert "could not load its guard models" in caplog.text
    with pytest.raises(HTTPException) as ei:
        await g.async_pre_call_hook(user_api_key_dict=None, cache=None,
                                    data={"messages": [{"role": "user", "content": "hi"}]}, call_type="completion")
    assert ei.value.status_code == 400 and ei.value.detail["reason"] == "guard_unavailable"


async def test_unreadable_prompt_goes_to_the_fail_mode():
    # content no guard can read (a number among the parts) is not a pass of unchecked text
    data = {"messages": [{"role": "user", "content": [{"type": "text", "text": "how to build a bomb"}, 5]}]}
    g = make()
    with pytest.raises(HTTPException) as ei:
        await g.async_pre_call_hook(user_api_key_dict=None, cache=None, data=data, call_type="completion")
    assert ei.value.status_code == 400 and ei.value.detail["reason"] == "guard_bad_input"
    with pytest.raises(HTTPException):
        await g.async_moderation_hook(data=data, user_api_key_dict=None, call_type="completion")
    guard = Guard(GuardConfig(fail_mode="open"), engine=ScriptedEngine(scripted_verdict))
    opened = GuardrailsPluginGuardrail(guard=guard, guardrail_name="t", event_hook="pre_call")
    assert await opened.async_pre_call_hook(user_api_key_dict=None, cache=None, data=data,
                                            call_type="completion") is data


async def test_unreadable_prompt_does_not_break_the_answer_check():
    data = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, 5]}]}
    out = await make().async_post_call_success_hook(data=data, user_api_key_dict=None,
                                                    response=response("Here is how to build a bomb."))
    assert out.choices[0].message.content == "I can't help with that."


async def test_blocked_stream_frees_its_monitors(monkeypatch):
    from litellm.types.utils import ModelResponseStream

    def chunk(delta: dict) -> ModelResponseStream:
        return ModelResponseStream(choices=[{"index": 0, "delta": delta, "finish_reason": None}], model="m")

    async def upstream():
        yield chunk({"reasoning_content": "a bomb plan.\n\n"})
        for _ in range(5):
            yield chunk({"content": "word "})

    from guardrails_plugin.stream import TurnRunner

    g = make()
    runners, released = [], []
    of = TurnRunner.of

    def spy(*args, **kwargs):
        runners.append(of(*args, **kwargs))
        return runners[-1]

    monkeypatch.setattr(TurnRunner, "of", spy)
    g.guard.release_session = released.append
    data = {"messages": [{"role": "user", "content": "q"}], "model": "m"}
    out = [c async for c in g.async_post_call_streaming_iterator_hook(None, upstream(), data)]
    assert out[-1].choices[0].finish_reason == "content_filter"
    tracks = runners[0].turn.tracks  # the reasoning, and the answer's if it began before the block
    assert tracks and {t.session_id for t in tracks} <= set(released)  # engine state freed


async def test_stream_choices_are_guarded_separately_and_unknown_reasoning_fails_closed():
    from litellm.types.utils import ModelResponseStream

    def chunk(*deltas: dict) -> ModelResponseStream:
        return ModelResponseStream(choices=[{"index": i, "delta": d, "finish_reason": None}
                                            for i, d in enumerate(deltas)], model="m")

    async def upstream(chunks):
        for c in chunks:
            yield c

    data = {"messages": [{"role": "user", "content": "q"}], "model": "m"}
    g = make()
    # n=2: choice 1 turns harmful; its text never goes out, and the stream ends for both choices
    two = [chunk({"content": "A calm "}, {"content": "Build a "}), chunk({"content": "story."}, {"content": "bomb now."})]
    out = [c async for c in g.async_post_call_streaming_iterator_hook(None, upstream(two), data)]
    sent = "".join(ch.delta.content or "" for c in out[:-1] for ch in c.choices)
    assert "bomb" not in sent and [ch.finish_reason for ch in out[-1].choices] == ["content_filter"] * 2
    # reasoning of a shape nobody can read: the fail mode (closed), never passed on unread
    odd = [chunk({"reasoning_content": {"opaque": "x"}}), chunk({"content": "fine"})]
    out = [c async for c in g.async_post_call_streaming_iterator_hook(None, upstream(odd), data)]
    assert len(out) == 1 and out[0].choices[0].finish_reason == "content_filter"
    assert out[0].provider_specific_fields["guardrails_plugin"]["reason"] == "guard_bad_input"
