"""The LiteLLM guardrail on a rule-based stand-in: try the proxy offline, without guard weights.

NOT A GUARD. ``ScriptedEngine.from_rules`` answers every guard prompt from the regexes below, in
the guard family's own output format, so the whole pipeline (prompt building, parsing, policy,
hold-back, refusals, fail modes) runs as it would with real guard models. Swap this module for
``guardrails_plugin_guardrail.py`` (next folder up) and point ``guard_config`` at real models.
"""

from __future__ import annotations

from typing import Any

from guardrails_plugin import Guard
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.litellm import GuardrailsPluginGuardrail, build_guard_config

#: regex over the judged text -> outcome (see ScriptedEngine.from_rules); the first match decides
RULES = {
    r"pipe bomb|nerve agent": "harmful",                              # block
    r"\b\d{3}-\d{2}-\d{4}\b": {"risk": 0.9, "categories": ["INF"]},   # an SSN: redact (category_actions)
    r"lock ?pick": 0.35,                                              # escalate band [0.3, 0.4)
    r"guard outage": "unavailable",                                   # the guard is down: fail mode
}


class TryoutGuardrail(GuardrailsPluginGuardrail):
    """GuardrailsPluginGuardrail whose Guard runs on ``ScriptedEngine.from_rules(RULES)``."""

    def __init__(self, **kwargs: Any):
        cfg = build_guard_config(
            kwargs.pop("guard_config", None), kwargs.pop("guard_settings", None), kwargs.pop("fail_mode", None)
        )
        super().__init__(guard=Guard(cfg, engine=ScriptedEngine.from_rules(RULES)), **kwargs)
