"""`models:` merges with the default model map (YAML, Python, environment variables); names match
case-insensitively; removing a default is explicit (`Name: null`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrails_plugin import Action, Guard, GuardConfig, GuardConfigError, Stage
from guardrails_plugin.config import GuardModelConfig
from tests.fake_openai_server import FakeOpenAIServer, Reply

RS_SAFE = '"Analysis": fine.\n"Judgment": 0'


def test_yaml_override_of_one_model_keeps_the_defaults(tmp_path: Path) -> None:
    p = tmp_path / "guard.yaml"
    p.write_text(
        "models:\n"
        "  ReasoningShield-1B: {engine: openai, base_url: 'http://127.0.0.1:8001/v1', served_model_name: RS}\n"
    )
    cfg = GuardConfig.from_yaml(p)
    rs = cfg.models["ReasoningShield-1B"]
    assert (rs.family, rs.engine, rs.served_model_name) == ("reasoningshield", "openai", "RS")
    assert cfg.models["GuardReasoner-1B"] == GuardModelConfig(family="guardreasoner")
    assert cfg.stage(Stage.REASONING).guards == ["ReasoningShield-1B"]


def test_python_override_reaches_the_configured_server() -> None:
    """The overridden engine is really used: the reasoning check goes to the server, the other
    default model stays as it was."""
    with FakeOpenAIServer(default=Reply.ok(RS_SAFE)) as srv:
        cfg = GuardConfig(models={"ReasoningShield-1B": {"engine": "openai", "base_url": srv.base_url,
                                                         "served_model_name": "RS"}})
        with Guard(cfg) as guard:
            d = guard.check_reasoning(query="q", reasoning="a harmless thought")
        (req,) = srv.completion_requests()
    assert d.action is Action.ALLOW and d.verdicts[0].ok and d.verdicts[0].guard == "ReasoningShield-1B"
    assert req.body["model"] == "RS"
    assert cfg.models["GuardReasoner-1B"].engine == "transformers"


@pytest.mark.parametrize("var", ["GUARDREASONER-1B", "guardreasoner_1b", "GuardReasoner_1B"])
def test_env_var_override_is_case_and_separator_insensitive(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(f"GUARDRAILS_PLUGIN_MODELS__{var}__ENGINE", "openai")
    monkeypatch.setenv(f"GUARDRAILS_PLUGIN_MODELS__{var}__BASE_URL", "http://127.0.0.1:8002/v1")
    cfg = GuardConfig()
    assert sorted(cfg.models) == ["GuardReasoner-1B", "ReasoningShield-1B"]
    gr = cfg.models["GuardReasoner-1B"]
    assert (gr.family, gr.engine, gr.base_url) == ("guardreasoner", "openai", "http://127.0.0.1:8002/v1")


def test_env_var_adds_a_model_whose_family_follows_from_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDRAILS_PLUGIN_MODELS__FLEXGUARD-8B__TIMEOUT_S", "5")
    monkeypatch.setenv("GUARDRAILS_PLUGIN_STAGES__RESPONSE__GUARDS", '["FlexGuard-8B"]')
    cfg = GuardConfig()
    (added,) = [k for k in cfg.models if k not in ("GuardReasoner-1B", "ReasoningShield-1B")]
    assert cfg.models[added].family == "flexguard" and cfg.models[added].timeout_s == 5
    assert cfg.stage(Stage.RESPONSE).guards == [added]  # the stage refers to the configured key


def test_null_removes_a_default_explicitly() -> None:
    cfg = GuardConfig(models={"ReasoningShield-1B": None}, stages={"reasoning": {"enabled": False}})
    assert list(cfg.models) == ["GuardReasoner-1B"]
    with pytest.raises(GuardConfigError, match="unknown guard model.*ReasoningShield-1B"):
        GuardConfig.build(models={"ReasoningShield-1B": None})  # the reasoning stage still uses it
    with pytest.raises(GuardConfigError, match="no model named 'Nope-1B'"):
        GuardConfig.build(models={"Nope-1B": None})


def test_new_models_and_family_rules() -> None:
    cfg = GuardConfig(models={"FlexGuard-8B": {}, "Mine": {"model": "/models/GuardReasoner-8B"}},
                      stages={"response": {"guards": ["flexguard-8b"]}})
    assert cfg.models["FlexGuard-8B"].family == "flexguard" and cfg.models["Mine"].family == "guardreasoner"
    assert cfg.stage(Stage.RESPONSE).guards == ["FlexGuard-8B"]
    with pytest.raises(GuardConfigError, match="no `family` given"):
        GuardConfig.build(models={"MyGuard": {"engine": "transformers"}})
    with pytest.raises(GuardConfigError, match="unknown guard model 'llamaguard'"):
        GuardConfig.build(models={"X": {"family": "llamaguard"}})
    # another family under a default's name is another model: it inherits none of the old fields
    cfg = GuardConfig(models={"GuardReasoner-1B": {"model": "/m/gr", "timeout_s": 3}})
    cfg2 = GuardConfig(**{**cfg.model_dump(), "models": {"GuardReasoner-1B": {"family": "flexguard"}}})
    assert cfg2.models["GuardReasoner-1B"].model is None and cfg2.models["GuardReasoner-1B"].timeout_s == 30


def test_yaml_round_trip_and_guard_lookup_by_any_case(tmp_path: Path) -> None:
    cfg = GuardConfig(models={"GuardReasoner-1B": {"timeout_s": 7}})
    cfg.to_yaml(tmp_path / "g.yaml")
    again = GuardConfig.from_yaml(tmp_path / "g.yaml")
    assert again.models == cfg.models
    from guardrails_plugin.engines import ScriptedEngine

    guard = Guard(cfg, engine=ScriptedEngine(["Answers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"]))
    assert guard.model("guardreasoner_1b") is guard.model("GuardReasoner-1B")


def test_session_header_travels_from_yaml_to_the_engine(tmp_path) -> None:
    """vllm-router deployments that key stickiness on another header name set it in the config."""
    from guardrails_plugin.loading import build_engine
    from guardrails_plugin.models import get_model_class

    path = tmp_path / "guard.yaml"
    path.write_text(
        "models:\n  GuardReasoner-1B: {engine: openai, base_url: 'http://127.0.0.1:9', session_header: x-route-key}\n"
    )
    cfg = GuardConfig.from_yaml(path)
    mc = cfg.models["GuardReasoner-1B"]
    assert build_engine(mc, get_model_class(mc.family)()).session_header == "x-route-key"
    off = mc.model_copy(update={"session_header": None})
    assert build_engine(off, get_model_class(mc.family)()).session_header is None
