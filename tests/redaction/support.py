"""Guards for redaction tests: FlexGuard's format (graded risks, categories) from scripted rules."""

from __future__ import annotations

from typing import Any

from guardrails_plugin import Guard, GuardConfig
from guardrails_plugin.engines import ScriptedEngine

#: one value of each kind a detector finds (the label says what it is, for the sentence around it)
PII = {
    "email": ("e-mail", "bob@example.com", "EMAIL_ADDRESS"),
    "phone": ("phone", "+1 415-555-0132", "PHONE_NUMBER"),
    "credit_card": ("card", "4111 1111 1111 1111", "CREDIT_CARD"),
    "iban": ("IBAN", "DE89 3704 0044 0532 0130 00", "IBAN_CODE"),
    "ssn": ("SSN", "123-45-6789", "US_SSN"),
    "national_id": ("NI number", "AB123456C", "UK_NINO"),
    "ip": ("address", "10.20.30.40", "IP_ADDRESS"),
    "mac": ("MAC", "00:1A:2B:3C:4D:5E", "MAC_ADDRESS"),
    "url": ("page", "https://files.example.org/me.pdf", "URL"),
    "secret": ("token", "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8", "SECRET"),
}

#: NOT A GUARD: the stand-in flags harmful sentences (VIO) and anything with a value in it (INF);
#: the first matching rule decides, so a text with both gets both categories
HARMFUL = r"pipe bomb|nerve agent"
DATA = r"@|\d{3}|\d+\.\d+\.\d|https?://|ghp_|AKIA|[A-F0-9]{2}:[A-F0-9]{2}|AB\d{6}|TCK-"
RULES: list[tuple[str, Any]] = [
    (rf"(?s)(?=.*(?:{HARMFUL}))(?=.*(?:{DATA}))", {"risk": 0.9, "categories": ["VIO", "INF"]}),
    (HARMFUL, {"risk": 0.9, "categories": ["VIO"]}),
    (DATA, {"risk": 0.9, "categories": ["INF"]}),
]


def redacting_guard(rules: Any = None, *, engine: Any = None, stage: str = "response", **redaction: Any) -> Guard:
    """A Guard whose ``stage`` REDACTs INF and VIO with FlexGuard-8B's format."""
    cfg = GuardConfig(
        category_actions={"INF": "redact", "VIO": "redact"},
        models={"FlexGuard-8B": {}},
        stages={"prompt": {"guards": ["FlexGuard-8B"], "redaction": redaction if stage == "prompt" else {}},
                "response": {"guards": ["FlexGuard-8B"], "redaction": redaction if stage == "response" else {}}},
    )
    return Guard(cfg, engine=engine or ScriptedEngine.from_rules(RULES if rules is None else rules))
