"""Start-up fails closed (issue 24 findings 5 and 11): a real ``litellm --config`` proxy whose
guardrail cannot run as configured must not come up. LiteLLM skips a guardrail whose constructor
raises ValueError (its own mode check included) and serves unguarded; ours raises
GuardrailStartupError, which stops the proxy. The proxy that does start with an allowed Assistants
route is tests/litellm/test_bypass_requests.py's."""

from __future__ import annotations

import shutil

import pytest
from litellm_support.proxy import REPO, start_proxy, write_config

pytestmark = pytest.mark.timeout(300)

ASSISTANTS = {"custom_llm_provider": "openai", "litellm_params": {"api_key": "x", "api_base": "http://127.0.0.1:9/v1"}}
CASES = {
    "mode-logging_only": ({"mode": "logging_only"}, None),
    "mode-pre_call+logging_only": ({"mode": ["pre_call", "logging_only"]}, None),
    "mode-typo-post-call": ({"mode": ["pre_call", "post-call"]}, None),
    "bad-guard-config": ({"mode": "pre_call", "guard_config": {"strictness": "not-a-preset"}}, None),
    "assistants-route-not-allowed": ({"mode": ["pre_call", "post_call"]}, ASSISTANTS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_guardrail_that_cannot_run_stops_the_proxy(tmp_path, case):
    params, assistants = CASES[case]
    shutil.copy(REPO / "integrations/litellm/guardrails_plugin_guardrail.py", tmp_path)
    cfg = write_config(
        tmp_path,
        [{"model_name": "mock", "litellm_params": {"model": "openai/mock", "api_key": "x", "mock_response": "x"}}],
        [{"guardrail_name": "bad", "litellm_params": {
            "guardrail": "guardrails_plugin_guardrail.GuardrailsPluginGuardrail", "default_on": True, **params}}],
    )
    if assistants is not None:
        import yaml

        data = yaml.safe_load(cfg.read_text())
        data["assistant_settings"] = assistants
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RuntimeError) as ei:  # start_proxy: "process exited with ..." and its log
        start_proxy(cfg, tmp_path, timeout=150).stop()
    log = str(ei.value)
    assert "process exited" in log and "GuardrailStartupError" in log, log[-1500:]
    assert "'bad' not started" in log
    if case.startswith("assistants"):
        assert "allow_unguarded_routes" in log
