"""The public names other code relies on (../shared/design.md, "Public API") stay importable, and
every package's ``__all__`` names only what it really exports (httpx's tests/test_exported_members.py).

A rename or a removed re-export fails here, not in a user's import."""

from __future__ import annotations

import importlib

import pytest

# design.md's public API, module by module.
DESIGN_NAMES = {
    "guardrails_plugin": "Guard GuardConfig Stage Action Verdict Decision GuardrailViolation GuardRequest",
    "guardrails_plugin.models": "ReasoningShield GuardReasoner FlexGuard LlamaGuard3 LlamaGuard4 Qwen3Guard "
    "GraniteGuardian ShieldGemma",
    "guardrails_plugin.engines": "TransformersEngine OpenAIEngine ScriptedEngine",
    "guardrails_plugin.testing": "build_tiny_model",
    "guardrails_plugin.audit": "open_store",
    "guardrails_plugin.langchain": "GuardCallbackHandler GuardedRunnable GuardMiddleware",
    "guardrails_plugin.litellm": "GuardrailsPluginGuardrail",
}

PACKAGES = sorted(DESIGN_NAMES)


@pytest.mark.parametrize("module", PACKAGES)
def test_design_names_are_exported(module: str) -> None:
    mod = importlib.import_module(module)
    exported = set(getattr(mod, "__all__", ()))
    for name in DESIGN_NAMES[module].split():
        assert hasattr(mod, name), f"{module}.{name} is a public name in design.md"
        assert name in exported, f"{module}.__all__ must list {name}"


@pytest.mark.parametrize("module", PACKAGES)
def test_all_names_only_what_is_there(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)]
    assert not missing, f"{module}.__all__ lists names it does not export: {missing}"


@pytest.mark.parametrize(
    "old_path",
    [
        "guardrails_plugin.monitor",
        "guardrails_plugin.streaming",
        "guardrails_plugin.circuit",
        "guardrails_plugin.evaluation",
        "guardrails_plugin.engines.transformers_engine",
        "guardrails_plugin.engines.logprobs",
    ],
)
def test_no_shim_modules(old_path: str) -> None:
    """0.1.0 was never released: moved modules have one path, not a shim at the old one."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old_path)


def test_models_have_no_legacy_tuple() -> None:
    models = importlib.import_module("guardrails_plugin.models")
    assert not hasattr(models, "MODEL_CLASSES"), "use guardrails_plugin.models.families()"
