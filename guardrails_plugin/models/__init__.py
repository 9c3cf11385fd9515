"""Guard model adapters (prompt building and output parsing, one module per family) and a registry
that maps a family or model name from the configuration to its adapter class."""

from __future__ import annotations

from ..errors import GuardConfigError
from .base import GuardModel
from .flexguard import FlexGuard
from .guardreasoner import GuardReasoner
from .reasoningshield import ReasoningShield

MODEL_CLASSES: tuple[type[GuardModel], ...] = (ReasoningShield, GuardReasoner, FlexGuard)


def get_model_class(family_or_name: str) -> type[GuardModel]:
    """The adapter class for a family ("guardreasoner"), a model name ("GuardReasoner-8B") or a
    hub id ("yueliu1999/GuardReasoner-8B"); case-insensitive. Raises GuardConfigError if unknown."""
    if not isinstance(family_or_name, str) or not family_or_name.strip():
        raise GuardConfigError(f"guard model name must be a non-empty string, got {family_or_name!r}")
    key = family_or_name.strip().lower()
    # A local folder or hub id names the model by its last path part ("org/Name-1B" -> "name-1b").
    base = key.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    for cls in MODEL_CLASSES:
        hub_ids = {cls.default_model_id.lower(), *(v.lower() for v in cls.variants.values())}
        if key in hub_ids or base == cls.family or base.startswith((cls.family + "-", cls.family + "_")):
            return cls
    known = ", ".join(cls.family for cls in MODEL_CLASSES)
    raise GuardConfigError(f"unknown guard model {family_or_name!r} (known families: {known})")


__all__ = [
    "GuardModel",
    "ReasoningShield",
    "GuardReasoner",
    "FlexGuard",
    "MODEL_CLASSES",
    "get_model_class",
]
