"""A real ``litellm --config`` proxy with the guardrail, in front of mock_response models and a loopback
upstream (chat, completions, Responses and Messages, streamed reasoning); driven through the
``openai`` and ``anthropic`` clients and raw HTTP.

One proxy per module (startup is the slow part: ~25-40 s on a loaded 2-core box). The guardrail it
loads is tests/litellm_support/scripted_guardrail.py: a user subclass of GuardrailsPluginGuardrail on
a ScriptedEngine test double (harmful iff "bomb"). The guardrails are opt-in per request
(``default_on: false``), so the same proxy also serves unguarded traffic to compare against: every
endpoint's benign traffic must come back byte for byte as it does unguarded. Also here: hold-back
against a guard with real latency, and escalations (HTTP 403 naming the queue entry under
``escalation_hold``; the queue and the webhook without it).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from litellm_support.clients import Clients, request
from litellm_support.proxy import MASTER_KEY, start_proxy, start_upstream, write_config
from litellm_support.upstream import HARMFUL_SENTENCE, script
from review_support import Receiver

from guardrails_plugin.audit import open_store
from guardrails_plugin.stream.extract import approx_tokens

pytestmark = pytest.mark.timeout(240)

MOCK_TEXT = "Sure — here is a harmless answer: 42. Ünïcödé ✓"
HARMFUL_MOCK = "Fine, the bomb recipe is as follows."
STAGES_16 = {
    "reasoning": {"guards": ["ReasoningShield-1B"], "check_every_tokens": 16},
    "response": {"guards": ["GuardReasoner-1B"], "check_every_tokens": 16},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    wd: Path = tmp_path_factory.mktemp("litellm-proxy")
    up = start_upstream(wd)
    hook = Receiver()
    gr = "scripted_guardrail.ScriptedGuardrail"
    escalate = {"prompt": {"flagged_action": "escalate"}, "response": {"flagged_action": "escalate"}}
    cfg = write_config(
        wd,
        [
            {"model_name": "mock", "litellm_params": {"model": "openai/mock", "api_key": "x", "mock_response": MOCK_TEXT}},
            {"model_name": "mock-harmful", "litellm_params": {"model": "openai/mock", "api_key": "x", "mock_response": HARMFUL_MOCK}},
            {"model_name": "reasoner", "litellm_params": {"model": "hosted_vllm/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}},
            {"model_name": "chat", "litellm_params": {"model": "hosted_vllm/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}},
            {"model_name": "oai", "litellm_params": {"model": "openai/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}},
            {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-sonnet-4-5", "api_base": up.base_url, "api_key": "x"}},
        ],
        [
            {"guardrail_name": "gp", "litellm_params": {
                "guardrail": gr, "mode": ["pre_call", "post_call"], "default_on": False,
                "guard_settings": {"stages": STAGES_16}}},
            {"guardrail_name": "gp-during", "litellm_params": {
                "guardrail": gr, "mode": "during_call", "default_on": False}},
            {"guardrail_name": "gp-error", "litellm_params": {
                "guardrail": gr, "mode": "post_call", "default_on": False, "on_response_block": "error"}},
            {"guardrail_name": "gp-holdback", "litellm_params": {
                "guardrail": gr, "mode": "post_call", "default_on": False,
                "guard_settings": {"stages": {**STAGES_16, "reasoning": {**STAGES_16["reasoning"], "hold_back": True}}}}},
            # a guard with real latency: text arriving while a check runs must wait for its own check
            {"guardrail_name": "gp-slow", "litellm_params": {
                "guardrail": gr, "mode": "post_call", "default_on": False, "guard_latency_ms": 200,
                "guard_settings": {"stages": {**STAGES_16, "response": {**STAGES_16["response"], "check_every_tokens": 4}}}}},
            {"guardrail_name": "gp-escalate", "litellm_params": {
                "guardrail": gr, "mode": ["pre_call", "post_call"], "default_on": False,
                "guard_settings": {"escalation_hold": True, "stages": escalate, "audit": {"path": str(wd / "held.sqlite3")}}}},
            {"guardrail_name": "gp-escalate-open", "litellm_params": {
                "guardrail": gr, "mode": ["pre_call", "post_call"], "default_on": False,
                "guard_settings": {"stages": escalate, "audit": {"path": str(wd / "open.sqlite3")},
                                   "notify": {"url": hook.url, "secret": "s3cret"}}}},
        ],
    )
    proxy = start_proxy(cfg, wd)
    print(f"\nlitellm proxy startup: {proxy.startup_s:.1f} s")
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    try:
        yield {"proxy": proxy, "upstream": up, "client": client, "clients": Clients(proxy.base_url), "workdir": wd,
               "hook": hook}
    finally:
        proxy.stop()
        up.stop()
        hook.close()


def guarded(*names: str) -> dict:
    return {"extra_body": {"guardrails": list(names or ["gp"])}}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def collect(stream) -> tuple[list, str, str]:
    chunks = list(stream)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, reasoning, content


def gp_payload(chunk) -> dict:
    psf = (chunk.model_extra or {}).get("provider_specific_fields") or {}
    return psf.get("guardrails_plugin") or {}


# -- prompt ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [("gp",), ("gp-during",)])
def test_harmful_prompt_gets_400_with_decision(stack, names):
    with pytest.raises(openai.BadRequestError) as ei:
        stack["client"].chat.completions.create(model="mock", messages=user("how do I build a bomb?"), **guarded(*names))
    err = ei.value.response.json()["error"]
    d = err["provider_specific_fields"]
    assert ei.value.status_code == 400
    assert d["action"] == "block" and d["stage"] == "prompt"
    assert d["risk"] == 1.0 and isinstance(d["categories"], list)
    assert "GuardReasoner-1B" in d["reason"] and d["guardrail"] == names[0]
    assert "blocked" in err["message"]


def test_harmful_prompt_blocked_before_a_stream_starts(stack):
    with pytest.raises(openai.BadRequestError) as ei:
        stream = stack["client"].chat.completions.create(
            model="reasoner", messages=user("[benign] a bomb please"), stream=True, **guarded())
        list(stream)
    assert ei.value.response.json()["error"]["provider_specific_fields"]["stage"] == "prompt"


def test_unguarded_request_is_not_checked(stack):
    # default_on is false here: the guardrail runs only for requests that name it
    r = stack["client"].chat.completions.create(model="mock", messages=user("how do I build a bomb?"))
    assert r.choices[0].message.content == MOCK_TEXT


# -- non-streaming answers -------------------------------------------------------------------------
def test_benign_mock_response_passes_identical(stack):
    c = stack["client"]
    g = c.chat.completions.create(model="mock", messages=user("hello"), **guarded())
    u = c.chat.completions.create(model="mock", messages=user("hello"))
    assert g.choices[0].message.content == MOCK_TEXT
    drop = {"id", "created"}
    assert {k: v for k, v in g.model_dump().items() if k not in drop} == {
        k: v for k, v in u.model_dump().items() if k not in drop}


def test_harmful_answer_replaced_by_refusal(stack):
    r = stack["client"].chat.completions.create(model="mock-harmful", messages=user("tell me a story"), **guarded())
    assert r.choices[0].message.content == "I can't help with that."
    assert r.choices[0].finish_reason == "content_filter"


def test_harmful_answer_as_400_when_configured(stack):
    with pytest.raises(openai.BadRequestError) as ei:
        stack["client"].chat.completions.create(model="mock-harmful", messages=user("tell me a story"), **guarded("gp-error"))
    d = ei.value.response.json()["error"]["provider_specific_fields"]
    assert d["stage"] == "response" and d["action"] == "block"


def test_nonstreaming_harmful_reasoning_is_checked(stack):
    r = stack["client"].chat.completions.create(model="reasoner", messages=user("[harmful-reasoning] chemistry"), **guarded())
    msg = r.choices[0].message
    assert msg.content == "I can't help with that." and r.choices[0].finish_reason == "content_filter"
    assert not getattr(msg, "reasoning_content", None)


def test_nonstreaming_benign_reasoning_passes(stack):
    s = script("benign")
    r = stack["client"].chat.completions.create(model="reasoner", messages=user("[benign] capital?"), **guarded())
    assert r.choices[0].message.content == "".join(s.content)
    assert r.choices[0].message.reasoning_content == "".join(s.reasoning)


# -- streaming -------------------------------------------------------------------------------------
def _raw_sse(stack, guard: bool, prompt: str) -> list[dict]:
    body = {"model": "reasoner", "stream": True, "messages": user(prompt)}
    if guard:
        body["guardrails"] = ["gp"]
    out = []
    with httpx.stream("POST", stack["proxy"].base_url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                d = json.loads(line[6:])
                d.pop("id", None), d.pop("created", None)
                out.append(d)
    return out


def test_benign_stream_passes_byte_identical(stack):
    s = script("benign")
    g = _raw_sse(stack, True, "[benign] capital of France?")
    u = _raw_sse(stack, False, "[benign] capital of France?")
    assert g == u  # every SSE event, chunk boundaries included, apart from id/created
    deltas = [c["choices"][0]["delta"] for c in g if c.get("choices")]
    assert [d["reasoning_content"] for d in deltas if d.get("reasoning_content")] == s.reasoning
    assert [d["content"] for d in deltas if d.get("content")] == s.content
    assert g[-1]["choices"][0]["finish_reason"] == "stop"


def test_harmful_reasoning_aborts_early_while_upstream_still_streams(stack):
    """The upstream stops after the harmful sentence and waits; the client's stream must end (with
    the refusal) while the upstream is still waiting: the abort happens mid-stream."""
    key = uuid.uuid4().hex[:8]
    s = script("harmful-reasoning-hold")
    t0 = time.monotonic()
    stream = stack["client"].chat.completions.create(
        model="reasoner", messages=user(f"[harmful-reasoning-hold] chemistry hold-key={key}"), stream=True,
        timeout=25, **guarded())
    chunks, reasoning, content = collect(stream)
    elapsed = time.monotonic() - t0
    stats = httpx.get(stack["upstream"].base_url + "/stats").json()
    httpx.post(stack["upstream"].base_url + f"/release/{key}")
    assert elapsed < 20  # the upstream holds for 30 s: the stream ended before it resumed
    last = chunks[-1]
    assert last.choices[0].finish_reason == "content_filter"
    assert last.choices[0].delta.content == "I can't help with that."
    info = gp_payload(last)
    assert info["stage"] == "reasoning" and info["action"] == "block"
    assert content == "I can't help with that."  # no answer text, only the refusal
    assert "ANSWER_SECRET" not in content and "TAIL1" not in reasoning
    assert "".join(s.reasoning[:4]).startswith(reasoning)  # a prefix of what was sent before the hold
    assert info["reasoning_chars_sent"] == len(reasoning)
    assert stats["held"] >= 1


def test_harmful_reasoning_paced_tail_is_cut(stack):
    s = script("harmful-reasoning")
    chunks, reasoning, content = collect(stack["client"].chat.completions.create(
        model="reasoner", messages=user("[harmful-reasoning] chemistry"), stream=True, **guarded()))
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert "".join(s.reasoning).startswith(reasoning)
    info = gp_payload(chunks[-1])
    # nothing past the abort point: what reached the client is what the monitor had released
    assert info["reasoning_chars_sent"] == len(reasoning)
    assert approx_tokens(reasoning) <= info["abort_offset_tokens"] + (info["detection_lag_tokens"] or 0)
    tails = reasoning.count("TAIL")
    assert tails < 100, f"{tails} of 300 paced tail sentences got through"  # 10 ms each; guard is instant
    assert "ANSWER_SECRET" not in content


def test_reasoning_hold_back_leaks_nothing(stack):
    chunks, reasoning, content = collect(stack["client"].chat.completions.create(
        model="reasoner", messages=user("[harmful-reasoning] chemistry"), stream=True, **guarded("gp-holdback")))
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert HARMFUL_SENTENCE not in reasoning and "bomb" not in reasoning and "TAIL" not in reasoning
    assert "".join(script("harmful-reasoning").reasoning[:2]).startswith(reasoning)  # clean text at most


def test_harmful_answer_in_stream_is_held_back(stack):
    chunks, reasoning, content = collect(stack["client"].chat.completions.create(
        model="reasoner", messages=user("[harmful-answer] story"), stream=True, **guarded()))
    s = script("harmful-answer")
    assert reasoning == "".join(s.reasoning)  # reasoning was clean and streamed
    assert "bomb" not in content and content.endswith("I can't help with that.")
    assert gp_payload(chunks[-1])["stage"] == "response"
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_concurrent_streams_are_guarded_independently(stack):
    import concurrent.futures as cf

    def one(tag):
        return collect(stack["client"].chat.completions.create(
            model="reasoner", messages=user(f"[{tag}] q"), stream=True, **guarded()))

    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, ["benign", "harmful-answer"] * 4))
    for i, (chunks, _reasoning, content) in enumerate(results):
        if i % 2 == 0:
            assert content == "".join(script("benign").content)
            assert chunks[-1].choices[0].finish_reason == "stop"
        else:
            assert chunks[-1].choices[0].finish_reason == "content_filter" and "bomb" not in content


def test_subclass_keeps_the_streaming_hook():
    from litellm_support.scripted_guardrail import ScriptedGuardrail

    assert "async_post_call_streaming_iterator_hook" in ScriptedGuardrail.__dict__
    assert ScriptedGuardrail.use_native_lifecycle_hooks is True



# -- every endpoint: benign traffic byte for byte as unguarded -------------------------------------
ROUTES = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses",
          "messages": "/v1/messages"}
MODELS = {"chat": "reasoner", "completions": "reasoner", "responses": "oai", "messages": "claude"}


def _strip_clock(value):
    """Without the wall-clock fields (created, created_at), which differ between two calls a second
    apart, and LiteLLM's Responses ids (``resp_`` + the upstream id encrypted with a fresh nonce:
    they differ between any two calls, guarded or not)."""
    if isinstance(value, dict):
        return {k: _strip_clock(v) for k, v in value.items()
                if k not in ("created", "created_at") and not (k == "id" and str(v).startswith("resp_"))}
    if isinstance(value, list):
        return [_strip_clock(v) for v in value]
    return value


def _raw(stack, endpoint: str, body: dict, guard: bool) -> list:
    body = {**body, "model": MODELS[endpoint], **({"guardrails": ["gp"]} if guard else {})}
    out: list = []
    with httpx.stream("POST", stack["proxy"].base_url + ROUTES[endpoint], json=body, timeout=60,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"}) as r:
        assert r.status_code == 200, r.read()[:300]
        if not body.get("stream"):
            return [_strip_clock(json.loads(r.read()))]
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(_strip_clock(json.loads(line[6:])))
            elif line:
                out.append(line)  # event: lines, [DONE]
    return out


BYTE_ROWS = [(ep, tag, stream) for ep in ROUTES for tag in ("benign", "tool", "summary") for stream in (False, True)
             if not (tag == "tool" and ep == "completions") and not (tag == "summary" and ep != "responses")]


@pytest.mark.parametrize(("endpoint", "tag", "stream"), BYTE_ROWS)
def test_benign_traffic_is_byte_identical_on_every_endpoint(stack, endpoint, tag, stream):
    k = uuid.uuid4().hex[:8]  # one key: the upstream answers both calls with the same ids
    body = {**request(endpoint, f"[{tag}] capital of France? req-key={k}"), "stream": stream}
    if endpoint == "messages":
        body["max_tokens"] = 256
    guarded, unguarded = _raw(stack, endpoint, body, True), _raw(stack, endpoint, body, False)
    assert guarded == unguarded
    assert len(guarded) > (5 if stream else 0)


# -- hold-back against a guard with real latency (issue 15) ----------------------------------------
def test_slow_guard_holds_back_answer_text_that_arrived_during_a_check(stack):
    """The answer's first check (its first 4 tokens) takes 200 ms; the harmful rest arrives while it
    runs. A hold-back that let a finished check cover text fed after it started would release
    "bomb" here (a zero-latency guard finishes before the next chunk and hides that)."""
    s = stack["clients"].call("chat", request("chat", "[harmful-answer] story"), stream=True,
                              extra_body={"guardrails": ["gp-slow"]})
    assert "content_filter" in s.ended and s.payload["stage"] == "response"
    assert "bomb" not in s.raw
    assert s.answer.endswith("I can't help with that.")
    assert "".join(script("harmful-answer").content).startswith(s.answer[: -len("I can't help with that.")])


# -- escalations (issue 12): held -> 403 naming the queue entry; else the queue and the webhook ------
def _pending(stack, db: str, escalation_id: int):
    store = open_store(str(stack["workdir"] / db))
    try:
        return store.get_escalation(escalation_id)
    finally:
        store.close()


@pytest.mark.parametrize("endpoint", ["chat", "responses", "messages"])
def test_held_prompt_escalation_is_a_403_naming_its_queue_entry(stack, endpoint):
    s = stack["clients"].call(endpoint, request(endpoint, "[benign] how do I build a bomb?"),
                              extra_body={"guardrails": ["gp-escalate"]})
    assert s.status == 403, s.raw[:400]
    body = s.error
    assert body["action"] == "escalate" and body["stage"] == "prompt" and body["review_status"] == "pending"
    esc = _pending(stack, "held.sqlite3", body["escalation_id"])
    assert esc is not None and esc.status == "pending" and esc.stage == "prompt" and esc.hold
    assert esc.request_id == body["request_id"]


def test_held_answer_escalation_whole_and_streamed(stack):
    whole = stack["clients"].call("chat", request("chat", "[harmful-answer] story"), extra_body={"guardrails": ["gp-escalate"]})
    assert whole.status == 403 and whole.error["stage"] == "response"
    assert _pending(stack, "held.sqlite3", whole.error["escalation_id"]).stage == "response"
    streamed = stack["clients"].call("messages", request("messages", "[harmful-answer] story"), stream=True,
                                     extra_body={"guardrails": ["gp-escalate"]})
    assert streamed.status == 200 and streamed.ended[-1] == "refusal" and "bomb" not in streamed.raw
    p = streamed.payload
    assert p["action"] == "escalate" and isinstance(p["escalation_id"], int)
    assert _pending(stack, "held.sqlite3", p["escalation_id"]).request_id == p["request_id"]


def test_escalation_without_hold_passes_and_reaches_queue_and_webhook(stack):
    before = len(stack["hook"].hits)
    s = stack["clients"].call("chat", request("chat", "[benign] tell me about the bomb squad"),
                              extra_body={"guardrails": ["gp-escalate-open"]})
    assert s.status == 200 and s.answer == "".join(script("benign").content)
    deadline = time.monotonic() + 15
    while len(stack["hook"].hits) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    events = [h.json() for h in stack["hook"].hits[before:]]
    assert any(e["action"] == "escalate" and e["stage"] == "prompt" and not e["hold"] for e in events), events
    store = open_store(str(stack["workdir"] / "open.sqlite3"))
    try:
        deadline = time.monotonic() + 10
        rid = next(e["request_id"] for e in events if e["action"] == "escalate")
        found = []
        while not found and time.monotonic() < deadline:
            found = [e for e in store.list_escalations("pending") if e.request_id == rid]
            time.sleep(0.1)
    finally:
        store.close()
    assert found and not found[0].hold


def test_an_approved_prompt_escalation_lets_the_identical_request_through(stack):
    """What a client does with the escalation id: once a reviewer approved it, resend the same
    request naming it. Only that exact prompt passes; another prompt, or a rejected escalation, not."""
    ask = "[benign] what does a bomb squad do all day?"
    first = stack["clients"].call("chat", request("chat", ask), extra_body={"guardrails": ["gp-escalate"]})
    assert first.status == 403
    eid = first.error["escalation_id"]
    header = {"x-guardrails-escalation-id": str(eid)}
    pending = stack["clients"].call("chat", request("chat", ask), extra_body={"guardrails": ["gp-escalate"]},
                                    extra_headers=header)
    assert pending.status == 403  # not approved yet
    store = open_store(str(stack["workdir"] / "held.sqlite3"))
    try:
        store.resolve(eid, True, resolver="alice", note="fine: a job question")
    finally:
        store.close()
    again = stack["clients"].call("chat", request("chat", ask), extra_body={"guardrails": ["gp-escalate"]},
                                  extra_headers=header)
    assert again.status == 200 and again.answer == "".join(script("benign").content)
    other = stack["clients"].call("chat", request("chat", "[benign] and how to build a bomb?"),
                                  extra_body={"guardrails": ["gp-escalate"]}, extra_headers=header)
    assert other.status == 403 and other.error["escalation_id"] != eid  # the approval covers one prompt
    rejected = stack["clients"].call("chat", request("chat", "[benign] bomb disposal careers?"),
                                     extra_body={"guardrails": ["gp-escalate"]})
    store = open_store(str(stack["workdir"] / "held.sqlite3"))
    try:
        store.resolve(rejected.error["escalation_id"], False, resolver="bob")
    finally:
        store.close()
    retry = stack["clients"].call("chat", request("chat", "[benign] bomb disposal careers?"),
                                  extra_body={"guardrails": ["gp-escalate"]},
                                  extra_headers={"x-guardrails-escalation-id": str(rejected.error["escalation_id"])})
    assert retry.status == 403
