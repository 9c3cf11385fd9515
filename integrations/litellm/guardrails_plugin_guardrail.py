"""The module the LiteLLM proxy loads for guardrails-plugin (next to config.yaml).

LiteLLM resolves ``guardrail: guardrails_plugin_guardrail.GuardrailsPluginGuardrail`` to this file
relative to the config file. Re-exporting the class (rather than subclassing it) keeps it the very
class the proxy inspects; to customise, subclass it here: streaming guarding is inherited.
"""

from guardrails_plugin.litellm import GuardrailsPluginGuardrail

__all__ = ["GuardrailsPluginGuardrail"]
