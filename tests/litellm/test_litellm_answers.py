"""In-process checks of the answer side (issue 24, findings 1-4): what a refused answer keeps, which
stage's fail mode an unknown answer field meets, the Responses events known by name (no suffix
rule) and the failure hook. The real-proxy rows are in test_bypass_matrix.py. The guard runs on a
ScriptedEngine test double (harmful iff "bomb")."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("litellm")

from litellm.types.llms.openai import ResponsesAPIResponse  # noqa: E402
from litellm.types.utils import Choices, Message, ModelResponse, TextChoices, TextCompletionResponse  # noqa: E402
from litellm_support.scripted_guardrail import scripted_verdict  # noqa: E402

from guardrails_plugin import Guard, GuardConfig  # noqa: E402
from guardrails_plugin.engines import ScriptedEngine  # noqa: E402
from guardrails_plugin.litellm import GuardrailsPluginGuardrail  # noqa: E402
from guardrails_plugin.litellm.failures import MESSAGE  # noqa: E402
from guardrails_plugin.stream import PartKind, TurnGuard, parts_of  # noqa: E402
from guardrails_plugin.stream.events import _NO_TEXT_EVENTS, EventParts  # noqa: E402

pytestmark = pytest.mark.timeout(60)
HARM = "someone built a bomb"


def make(**config: Any) -> GuardrailsPluginGuardrail:
    guard = Guard(GuardConfig(**config), engine=ScriptedEngine(scripted_verdict))
    return GuardrailsPluginGuardrail(guard=guard, guardrail_name="t", event_hook=["pre_call", "post_call"])


async def post(g: GuardrailsPluginGuardrail, response: Any) -> Any:
    return await g.async_post_call_success_hook({"messages": [{"role": "user", "content": "q"}]}, None, response)


def lp(tokens: list[str]) -> dict:
    return {"content": [{"token": t, "logprob": -0.1, "bytes": list(t.encode()),
                         "top_logprobs": [{"token": t, "logprob": -0.1, "bytes": list(t.encode())}]} for t in tokens]}


def chat(**message: Any) -> ModelResponse:
    logprobs = message.pop("logprobs", None)
    return ModelResponse(choices=[Choices(index=0, finish_reason="stop", message=Message(**message), logprobs=logprobs)])


# -- finding 1: a refused answer keeps no copy of its text ---------------------------------------------
async def test_a_refused_chat_choice_keeps_only_the_refusal():
    r = await post(make(), chat(content=f"Once {HARM}.", logprobs=lp(["Once ", HARM, "."]),
                                audio={"id": "a", "data": "AAAA", "expires_at": 1, "transcript": f"Once {HARM}."},
                                annotations=[{"type": "url_citation", "url_citation": {"url": "u", "title": HARM,
                                                                                      "start_index": 0, "end_index": 1}}]))
    c = r.choices[0]
    assert c.finish_reason == "content_filter" and c.logprobs is None
    assert "bomb" not in r.model_dump_json() and c.message.content == "I can't help with that."


async def test_a_refused_completion_choice_loses_its_logprobs():
    resp = TextCompletionResponse(choices=[TextChoices(index=0, text=HARM, finish_reason="stop", logprobs={
        "tokens": [HARM], "token_logprobs": [-0.1], "top_logprobs": [{HARM: -0.1}], "text_offset": [0]})])
    r = await post(make(), resp)
    assert r.choices[0].finish_reason == "content_filter" and "bomb" not in r.model_dump_json()


async def test_benign_logprobs_and_audio_are_left_alone():
    want = lp(["Paris ", "is nice."])
    r = await post(make(), chat(content="Paris is nice.", logprobs=want,
                                audio={"id": "a", "data": "AAAA", "expires_at": 1, "transcript": "Paris is nice."}))
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].logprobs.model_dump(exclude_none=True) == {"content": want["content"]}
    assert r.choices[0].message.audio.transcript == "Paris is nice."


def redacting(rendered: str) -> str:
    if "Human user:\n" in rendered and "555-0100" in rendered.rsplit("AI assistant:\n", 1)[-1]:
        return "Reasoning.\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: harmful\n"
    return scripted_verdict(rendered)


async def test_a_redacted_chat_answer_loses_its_logprobs_and_one_beside_the_content_is_refused():
    guard = Guard(GuardConfig(category_actions={"S7": "redact"}, stages={"response": {"flagged_action": "redact"}}),
                  engine=ScriptedEngine(redacting))
    g = GuardrailsPluginGuardrail(guard=guard, guardrail_name="t", event_hook=["pre_call", "post_call"])
    r = await post(g, chat(content="Call 555-0100.", logprobs=lp(["Call ", "555-0100", "."])))
    assert r.choices[0].finish_reason == "stop" and r.choices[0].logprobs is None
    assert "555-0100" not in r.model_dump_json() and r.choices[0].message.content  # redacted in place
    both = await post(g, chat(content="Call 555-0100.", audio={"id": "a", "data": "", "expires_at": 1,
                                                              "transcript": "Call 555-0100."}))
    assert both.choices[0].finish_reason == "content_filter" and "555-0100" not in both.model_dump_json()


# -- finding 2: beside the content, and fields nobody knows --------------------------------------------
def test_a_chat_message_is_read_beside_its_content():
    m = Message(content=None, refusal=f"r {HARM}", audio={"id": "a", "data": "", "expires_at": 1, "transcript": "t"},
                annotations=[{"type": "url_citation", "url_citation": {"url": "https://x", "title": "T",
                                                                       "start_index": 0, "end_index": 1}}],
                provider_specific_fields={"secret_note": "s", "thinking_blocks": None, "reasoning": "known"})
    got = [(p.kind, p.text) for p in parts_of(m)]
    assert (PartKind.ANSWER, f"r {HARM}") in got and (PartKind.ANSWER, "t") in got
    assert (PartKind.ANSWER, "\n[source] T <https://x>") in got
    assert [t for k, t in got if k is PartKind.UNKNOWN_ANSWER] == ["answer field 'secret_note'"]
    delta = parts_of({"choices": [{"index": 0, "delta": {"audio": {"id": "a", "transcript": "piece"}}}]})
    assert [(p.kind, p.text) for p in delta] == [(PartKind.ANSWER, "piece")]


@pytest.mark.parametrize(("answer_mode", "reasoning_mode", "refused"), [("open", "closed", False), ("closed", "open", True)])
async def test_an_unknown_answer_field_meets_the_response_stages_fail_mode(answer_mode, reasoning_mode, refused):
    g = make(stages={"response": {"guards": ["GuardReasoner-1B"], "fail_mode": answer_mode},
                     "reasoning": {"guards": ["ReasoningShield-1B"], "fail_mode": reasoning_mode}})
    r = await post(g, chat(content="fine", provider_specific_fields={"secret_note": HARM}))
    assert (r.choices[0].finish_reason == "content_filter") is refused
    if refused:
        assert "bomb" not in r.model_dump_json()
    turn = TurnGuard(g.guard.config, "q", unreadable=lambda stage, why: g.guard.stream_checks().unreadable(stage, why))
    turn.feed("x", parts_of({"choices": [{"index": 0, "delta": {"content": "ok", "provider_specific_fields": {"z": 1}}}]}))
    assert (turn.stop is not None and turn.stop.stage.value == "response") is refused


# -- finding 3: Responses -------------------------------------------------------------------------------
def test_no_suffix_rule_unknown_events_are_unknown_whatever_their_ending():
    ep = EventParts()
    for kind in ("response.telepathy_call.completed", "response.new_tool.in_progress", "response.x.generating",
                 "response.y.searching", "response.z.failed", "response.w.incomplete"):
        got = ep({"type": kind, "text": HARM})
        assert [p.kind for p in got] == [PartKind.UNKNOWN_ANSWER], kind
    for kind in sorted(_NO_TEXT_EVENTS):  # the listed ones carry no model text
        assert ep({"type": kind, "item_id": "i", "output_index": 0}) == [], kind
    note = ep({"type": "response.output_text.annotation.added", "item_id": "m", "content_index": 0,
               "annotation_index": 0, "annotation": {"type": "url_citation", "url": "u", "title": HARM}})
    assert [p.kind for p in note] == [PartKind.ANSWER] and HARM in note[0].text


def test_responses_items_that_carry_model_text_are_read():
    ep = EventParts()
    text = " ".join(p.text for p in ep.output([
        {"type": "web_search_call", "id": "w", "status": "completed", "action": {"type": "search", "query": "q1"}},
        {"type": "image_generation_call", "id": "g", "status": "completed", "result": "AAAA", "revised_prompt": "q2"},
        {"type": "file_search_call", "id": "f", "status": "completed", "queries": ["q3"]},
    ]))
    assert all(q in text for q in ("q1", "q2", "q3")) and "AAAA" not in text
    assert [p.kind for p in ep.output([{"type": "hologram_call", "id": "h"}])] == [PartKind.UNKNOWN_ANSWER]


async def test_a_refused_response_drops_top_level_fields_nobody_judged():
    resp = ResponsesAPIResponse(id="r", created_at=1, output=[{"type": "message", "id": "m", "role": "assistant",
                                "status": "completed", "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
                                status="completed", secret_note=HARM)
    r = await post(make(), resp)
    assert r.status == "incomplete" and "bomb" not in r.model_dump_json() and "secret_note" not in r.model_dump()


# -- finding 4: the failure hook --------------------------------------------------------------------------
async def test_upstream_failures_become_a_clean_error_and_the_proxys_own_stay():
    import litellm
    from fastapi import HTTPException
    from litellm.proxy._types import ProxyException

    g = make()
    for exc, status in ((litellm.APIError(status_code=500, message=f"Original Response: {HARM}", llm_provider="x",
                                          model="m"), 502),
                        (litellm.RateLimitError(message=HARM, llm_provider="x", model="m"), 429)):
        out = await g.async_post_call_failure_hook({"litellm_call_id": "c1"}, exc, None)
        assert isinstance(out, HTTPException) and out.status_code == status
        assert out.detail["error"] == MESSAGE and out.detail["request_id"] == "c1"
        assert "bomb" not in str(out.detail) and "bomb" not in str(exc) and "bomb" not in exc.message  # scrubbed
    own = ProxyException(message="prompt blocked", type="invalid_request_error", param=None, code=400)
    assert await g.async_post_call_failure_hook({}, own, None) is None
    assert await g.async_post_call_failure_hook({}, HTTPException(status_code=401, detail="no key"), None) is None
