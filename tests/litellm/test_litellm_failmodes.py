"""A dead guard engine behind a real ``litellm --config`` proxy: fail-closed refuses, fail-open passes and
logs the degraded flag. The proxy loads the shipped module (integrations/litellm/
guardrails_plugin_guardrail.py, copied next to the config as a user would) with the guard config
inline in the proxy config: an OpenAI-compatible guard engine on a closed 127.0.0.1 port.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import openai
import pytest
from litellm_support.proxy import MASTER_KEY, REPO, free_port, start_proxy, start_upstream, write_config
from litellm_support.upstream import script

pytestmark = pytest.mark.timeout(240)

MOCK_TEXT = "A perfectly ordinary answer."
REFUSAL = "I can't help with that."


def dead_guard_config(port: int) -> dict:
    dead = f"http://127.0.0.1:{port}/v1"
    return {
        "models": {
            "GuardReasoner-1B": {"family": "guardreasoner", "engine": "openai", "base_url": dead, "timeout_s": 3},
            "ReasoningShield-1B": {"family": "reasoningshield", "engine": "openai", "base_url": dead, "timeout_s": 3},
        },
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    wd: Path = tmp_path_factory.mktemp("litellm-failmodes")
    shutil.copy(REPO / "integrations/litellm/guardrails_plugin_guardrail.py", wd)
    up = start_upstream(wd)
    gcfg = dead_guard_config(free_port())  # nothing listens there
    gr = "guardrails_plugin_guardrail.GuardrailsPluginGuardrail"
    cfg = write_config(
        wd,
        [
            {"model_name": "mock", "litellm_params": {"model": "openai/mock", "api_key": "x", "mock_response": MOCK_TEXT}},
            {"model_name": "reasoner", "litellm_params": {"model": "hosted_vllm/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}},
        ],
        [
            {"guardrail_name": "closed", "litellm_params": {
                "guardrail": gr, "mode": ["pre_call", "post_call"], "default_on": False,
                "guard_config": gcfg, "fail_mode": "closed"}},
            {"guardrail_name": "closed-post", "litellm_params": {
                "guardrail": gr, "mode": "post_call", "default_on": False,
                "guard_config": gcfg, "fail_mode": "closed", "stages": ["reasoning", "response"]}},
            {"guardrail_name": "open", "litellm_params": {
                "guardrail": gr, "mode": ["pre_call", "post_call"], "default_on": False,
                "guard_config": gcfg, "fail_mode": "open"}},
        ],
    )
    proxy = start_proxy(cfg, wd)
    print(f"\nlitellm proxy startup: {proxy.startup_s:.1f} s")
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=60)
    try:
        yield {"proxy": proxy, "upstream": up, "client": client, "workdir": wd}
    finally:
        proxy.stop()
        up.stop()


def g(name: str) -> dict:
    return {"extra_body": {"guardrails": [name]}}


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_fail_closed_refuses_the_prompt(stack):
    with pytest.raises(openai.BadRequestError) as ei:
        stack["client"].chat.completions.create(model="mock", messages=user("hello"), **g("closed"))
    d = ei.value.response.json()["error"]["provider_specific_fields"]
    assert d["action"] == "block" and d["stage"] == "prompt"
    assert d["reason"] == "guard_unavailable" and d["degraded"] is False


def test_fail_closed_refuses_the_answer(stack):
    r = stack["client"].chat.completions.create(model="mock", messages=user("hello"), **g("closed-post"))
    assert r.choices[0].message.content == REFUSAL
    assert r.choices[0].finish_reason == "content_filter"


def test_fail_closed_ends_a_stream_with_a_refusal(stack):
    chunks = list(stack["client"].chat.completions.create(
        model="reasoner", messages=user("[benign] q"), stream=True, **g("closed-post")))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert content == REFUSAL  # the held-back answer never went out
    info = chunks[-1].model_extra["provider_specific_fields"]["guardrails_plugin"]
    assert info["reason"] == "guard_unavailable"


def test_fail_open_passes_and_logs_degraded(stack):
    before = stack["proxy"].logs().count("guardrails-plugin degraded")
    r = stack["client"].chat.completions.create(model="mock", messages=user("hello"), **g("open"))
    assert r.choices[0].message.content == MOCK_TEXT
    chunks = list(stack["client"].chat.completions.create(
        model="reasoner", messages=user("[benign] q"), stream=True, **g("open")))
    s = script("benign")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(s.content)
    assert chunks[-1].choices[0].finish_reason == "stop"
    deadline = time.monotonic() + 10
    while stack["proxy"].logs().count("guardrails-plugin degraded") <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = [ln for ln in stack["proxy"].logs().splitlines() if "guardrails-plugin degraded" in ln]
    assert len(lines) > before
    assert all("guardrail=open" in ln for ln in lines)  # only the fail-open guardrail degrades


def test_bad_guard_config_stops_the_proxy_from_starting(tmp_path):
    """LiteLLM skips a guardrail whose constructor raises ValueError and serves unguarded; ours
    raises GuardrailStartupError instead, so the proxy must not come up."""
    shutil.copy(REPO / "integrations/litellm/guardrails_plugin_guardrail.py", tmp_path)
    cfg = write_config(
        tmp_path,
        [{"model_name": "mock", "litellm_params": {"model": "openai/mock", "api_key": "x", "mock_response": "x"}}],
        [{"guardrail_name": "bad", "litellm_params": {
            "guardrail": "guardrails_plugin_guardrail.GuardrailsPluginGuardrail", "mode": "pre_call",
            "guard_config": {"strictness": "not-a-preset"}}}],
    )
    with pytest.raises(RuntimeError) as ei:
        start_proxy(cfg, tmp_path, timeout=150).stop()
    assert "GuardrailStartupError" in str(ei.value) or "not started" in str(ei.value)
