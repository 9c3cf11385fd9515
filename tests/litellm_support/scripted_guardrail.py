"""The guardrail the test proxies load: a USER SUBCLASS of GuardrailsPluginGuardrail whose Guard runs
on a ScriptedEngine.

ScriptedEngine is a test double, not a guard: it judges nothing. Its responder answers in each guard
model's real output format and calls the judged text harmful iff it contains "bomb"; a guard prompt
containing "[guard-down]" (the request's query does) raises, which the Guard treats as an engine
failure: the guard is down for that request and the fail mode decides ("[guard-down-late]": down
for the reasoning and answer checks only, after the prompt check passed). The subclass
deliberately does not define the streaming hook, so the tests also prove that a subclass keeps
guarding streams.
"""

from __future__ import annotations

from typing import Any

from guardrails_plugin import Guard
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.litellm import GuardrailsPluginGuardrail, build_guard_config

MARKER = "bomb"
GUARD_DOWN = "[guard-down]"
GUARD_DOWN_LATE = "[guard-down-late]"  # the prompt check works, reasoning and answer checks fail


def scripted_verdict(rendered: str) -> str:
    """A guard completion for the rendered guard prompt (ReasoningShield or GuardReasoner format)."""
    if GUARD_DOWN in rendered or (GUARD_DOWN_LATE in rendered and "\n\nAI assistant:\nNone\n\n" not in rendered):
        raise ConnectionError("scripted guard engine is down for this request")
    if "<|user|>\nQuery: " in rendered and "\nThought: " in rendered:  # ReasoningShield
        thought = rendered.rsplit("\nThought: ", 1)[1].rsplit("\n<|assistant|>", 1)[0]
        return f'"Analysis": scripted test double.\n"Judgment": {1 if MARKER in thought else 0}'
    if "Human user:\n" in rendered:  # GuardReasoner
        user, _, ai = rendered.rsplit("Human user:\n", 1)[1].partition("\n\nAI assistant:\n")
        req = "harmful" if MARKER in user else "unharmful"
        resp = "harmful" if MARKER in ai else "unharmful"
        return f"Scripted test double.\nAnswers: \nRequest: {req}\nCompletion: compliance\nResponse: {resp}\n"
    raise ValueError("unexpected guard prompt")


class ScriptedGuardrail(GuardrailsPluginGuardrail):
    """Test subclass: the guard runs on a ScriptedEngine with ``guard_latency_ms`` of latency."""

    def __init__(self, guard_latency_ms: float = 0.0, **kwargs: Any):
        cfg = build_guard_config(
            kwargs.pop("guard_config", None), kwargs.pop("guard_settings", None), kwargs.pop("fail_mode", None)
        )
        self.engine = ScriptedEngine(scripted_verdict, latency_s=float(guard_latency_ms) / 1000.0)
        super().__init__(guard=Guard(cfg, engine=self.engine), **kwargs)
