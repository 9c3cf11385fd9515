"""LiteLLM proxy integration: ``GuardrailsPluginGuardrail``, a LiteLLM ``CustomGuardrail``.

Needs the ``litellm`` extra (``pip install 'guardrails-plugin[litellm]'``).
"""

from .guardrail import GuardrailsPluginGuardrail, GuardrailStartupError, build_guard_config
from .report import blocked_exception, decision_payload

__all__ = ["GuardrailsPluginGuardrail", "GuardrailStartupError", "blocked_exception", "build_guard_config", "decision_payload"]
