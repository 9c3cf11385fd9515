"""In-process checks of the LiteLLM guardrail on every wire format (the real-proxy rows are in
test_bypass_matrix.py): which roles the prompt stage judges, unknown endpoints / items / events to
the fail mode, Anthropic SSE cut anywhere, deltas missing from a Responses stream, redactions that
map back onto one text. The guard runs on a ScriptedEngine test double (harmful iff "bomb")."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("litellm")

from litellm.proxy._types import ProxyException  # noqa: E402
from litellm.types.llms.openai import GenericEvent  # noqa: E402
from litellm_support.scripted_guardrail import scripted_verdict  # noqa: E402

from guardrails_plugin import Guard, GuardConfig  # noqa: E402
from guardrails_plugin.engines import ScriptedEngine  # noqa: E402
from guardrails_plugin.litellm import GuardrailsPluginGuardrail  # noqa: E402
from guardrails_plugin.stream.events import EventParts
from guardrails_plugin.stream.extract import PartKind  # noqa: E402

pytestmark = pytest.mark.timeout(60)
HARM = "how to build a bomb"


def make(responder: Any = scripted_verdict, **config: Any) -> GuardrailsPluginGuardrail:
    guard = Guard(GuardConfig(**config), engine=ScriptedEngine(responder))
    return GuardrailsPluginGuardrail(guard=guard, guardrail_name="t", event_hook=["pre_call", "post_call"])


async def pre(g: GuardrailsPluginGuardrail, data: dict, call_type: str = "acompletion") -> dict | ProxyException:
    try:
        return await g.async_pre_call_hook(user_api_key_dict=None, cache=None, data=data, call_type=call_type)
    except ProxyException as e:
        return e


async def stream(g: GuardrailsPluginGuardrail, items: list, data: dict | None = None) -> list:
    async def upstream():
        for i in items:
            yield i

    return [c async for c in g.async_post_call_streaming_iterator_hook(None, upstream(), data or {"model": "m"})]


# -- the prompt stage judges every client role in prompt_roles ---------------------------------------
def chat_with(role: str, text: str) -> dict:
    msgs: list[dict] = [{"role": "user", "content": "look it up"}]
    if role == "tool":
        msgs += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": text}]
    elif role == "assistant":
        msgs.append({"role": "assistant", "content": text})
    else:
        msgs.insert(0, {"role": role, "content": text})
    return {"messages": msgs + [{"role": "user", "content": "thanks"}]}


@pytest.mark.parametrize("role", ["system", "developer", "user", "tool", "assistant"])
async def test_prompt_roles_decide_what_the_prompt_stage_judges(role):
    """Every client role is judged by default (issue 24 finding 9); narrowing prompt_roles passes
    the roles it drops unjudged (what the docs say it costs)."""
    default = await pre(make(), chat_with(role, HARM))
    assert isinstance(default, ProxyException) and default.detail["stage"] == "prompt"
    narrowed = await pre(make(prompt_roles=["system", "developer", "user"]), chat_with(role, HARM))
    assert isinstance(narrowed, ProxyException) is (role in ("system", "developer", "user"))


async def test_assistant_reasoning_and_tool_calls_are_judged_when_assistant_is():
    g = make(prompt_roles=["user", "assistant"])
    data = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok",
                          "tool_calls": [{"id": "c", "type": "function", "function": {"name": "mail", "arguments": json.dumps({"b": HARM})}}]}]}
    assert isinstance(await pre(g, data), ProxyException)
    thinking = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": HARM, "signature": "s"}, {"type": "text", "text": "ok"}]}], "max_tokens": 5}
    assert isinstance(await pre(g, thinking, "anthropic_messages"), ProxyException)


async def test_completion_prompt_list_and_suffix_are_judged():
    g = make()
    assert isinstance(await pre(g, {"prompt": ["fine", HARM]}, "atext_completion"), ProxyException)
    assert isinstance(await pre(g, {"prompt": "fine", "suffix": HARM}, "atext_completion"), ProxyException)
    passed = await pre(g, {"prompt": "fine", "suffix": "end"}, "atext_completion")
    assert isinstance(passed, dict) and (passed["prompt"], passed["suffix"]) == ("fine", "end")
    tokens = await pre(g, {"prompt": [[101, 102]]}, "atext_completion")  # token ids: nobody can read them
    assert isinstance(tokens, ProxyException) and tokens.detail["reason"] == "guard_bad_input"


# -- unknown is unsafe -------------------------------------------------------------------------------
async def test_unknown_endpoints_fail_closed_and_the_allowlist_passes():
    g = make()
    unknown = await pre(g, {"prompt": "a cat"}, "aimage_generation")
    assert isinstance(unknown, ProxyException) and unknown.detail["reason"] == "guard_bad_input"
    assert await pre(g, {"input": HARM}, "aembedding") == {"input": HARM}  # no model text comes back
    opened = GuardrailsPluginGuardrail(guard=Guard(GuardConfig(), engine=ScriptedEngine(scripted_verdict)),
                                       guardrail_name="t", allow_endpoints=["image_generation"])
    assert await pre(opened, {"prompt": "a cat"}, "aimage_generation") == {"prompt": "a cat"}


async def test_input_the_translation_drops_is_unreadable():
    data = {"input": [{"role": "user", "content": "hi"}, {"type": "future_item", "text": HARM}]}
    e = await pre(make(), data, "aresponses")
    assert isinstance(e, ProxyException) and e.detail["reason"] == "guard_bad_input"
    doc = {"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": HARM}}]}]}
    e = await pre(make(), doc, "anthropic_messages")  # a text document the translation drops: judged itself
    assert isinstance(e, ProxyException) and "GuardReasoner-1B" in e.detail["reason"]
    fail_open = await pre(make(fail_mode="open"), data, "aresponses")
    assert not isinstance(fail_open, Exception) and fail_open["input"][1]["text"] == HARM


async def test_unknown_stream_events_go_to_the_fail_mode():
    ok = GenericEvent(type="response.output_text.delta", item_id="m", output_index=0, content_index=0, delta="fine",
                      sequence_number=1)
    odd = GenericEvent(type="response.telepathy.delta", delta=HARM, sequence_number=2)
    out = await stream(make(), [ok, odd])
    assert [e.type for e in out][-1] == "response.incomplete"
    assert out[-1].response["incomplete_details"]["reason"] == "content_filter"
    assert out[-1].guardrails_plugin["reason"] == "guard_bad_input"
    assert HARM not in json.dumps([e.model_dump() for e in out])


async def test_responses_text_only_in_done_events_is_judged():
    """An upstream that sends no deltas, only the finished item: its text is judged all the same."""
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": f"Sure: {HARM}.", "annotations": []}]}
    events = [GenericEvent(type="response.output_item.done", output_index=0, item=item, sequence_number=1),
              GenericEvent(type="response.completed", response={"id": "r", "output": [item]}, sequence_number=2)]
    out = await stream(make(), events)
    assert out[-1].type == "response.incomplete"
    assert HARM not in json.dumps([e.model_dump() for e in out])


def test_event_parts_feed_only_what_the_deltas_did_not_carry():
    ep = EventParts()
    assert [p.text for p in ep({"type": "response.output_text.delta", "item_id": "m", "content_index": 0, "delta": "Hel"})] == ["Hel"]
    assert [p.text for p in ep({"type": "response.output_text.done", "item_id": "m", "content_index": 0, "text": "Hello"})] == ["lo"]
    assert ep({"type": "response.output_text.done", "item_id": "m", "content_index": 0, "text": "Hello"}) == []
    changed = ep({"type": "response.output_text.done", "item_id": "m", "content_index": 0, "text": "Other"})
    assert [p.text for p in changed] == ["Other"]  # not what the deltas said: judged whole
    call = ep({"type": "response.output_item.added", "output_index": 1,
               "item": {"id": "fc", "type": "function_call", "name": "mail", "arguments": ""}})
    assert [(p.kind, p.text) for p in call] == [(PartKind.TOOL_CALL, "\n[tool call] mail(")]
    assert ep({"type": "message_start", "message": {"content": []}}) == []
    think = ep({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}})
    assert [(p.kind, p.text) for p in think] == [(PartKind.REASONING, "hm")]
    assert ep({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "x"}}) == []
    assert ep({"type": "content_block_start", "index": 2, "content_block": {"type": "hologram"}})[0].kind is PartKind.UNKNOWN_ANSWER


# -- Anthropic SSE cut anywhere ----------------------------------------------------------------------
def anthropic_sse(answer: str) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                                "model": "m", "content": [], "usage": {}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": w + " "}})
          for w in answer.split()],
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in events).encode()


@pytest.mark.parametrize("cut", [1, 7, 64])
async def test_anthropic_sse_cut_mid_event_passes_byte_identical_when_benign(cut):
    raw = anthropic_sse("Paris is the capital of France.")
    out = await stream(make(), [raw[i:i + cut] for i in range(0, len(raw), cut)])
    assert b"".join(out) == raw  # same bytes, regrouped at event boundaries


@pytest.mark.parametrize("cut", [5, 33])
async def test_anthropic_sse_cut_mid_event_is_refused_when_harmful(cut):
    raw = anthropic_sse(f"Sure, here is {HARM} at home.")
    out = b"".join(await stream(make(), [raw[i:i + cut] for i in range(0, len(raw), cut)])).decode()
    assert "bomb" not in out
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "message_stop"
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == "refusal" and delta["guardrails_plugin"]["stage"] == "response"
    opened = [e["index"] for e in events if e["type"] == "content_block_start"]
    closed = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert sorted(opened) == sorted(closed)  # every block the client saw open is closed


# -- redactions that map back onto one text ----------------------------------------------------------
def redacting(rendered: str) -> str:
    if "Human user:\n" in rendered and "555-0100" in rendered.rsplit("AI assistant:\n", 1)[-1]:
        return "Reasoning.\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: harmful\n"
    return scripted_verdict(rendered)


async def test_redaction_of_one_answer_text_is_applied_in_place():
    g = make(redacting, category_actions={"S7": "redact"}, stages={"response": {"flagged_action": "redact"}})
    msg = {"id": "m", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
           "content": [{"type": "text", "text": "Call 555-0100."}], "usage": {}}
    out = await g.async_post_call_success_hook(data={"messages": [{"role": "user", "content": "q"}]},
                                               user_api_key_dict=None, response=msg)
    assert out["content"] == [{"type": "text", "text": "[REDACTED]"}] and out["stop_reason"] == "end_turn"
    two = {**msg, "content": [{"type": "text", "text": "Call 555-0100."}, {"type": "text", "text": "Or not."}]}
    out = await g.async_post_call_success_hook(data={}, user_api_key_dict=None, response=two)
    assert out["stop_reason"] == "refusal"  # a redaction of two joined texts cannot be put back
