"""Guard model adapters (prompt building, output parsing, categories and fast-scoring spec, one
module per family) and the registry that maps a family, preset or model name to its adapter class.

Each family module registers its class on import (models/base.py); importing them all here is
what makes a family known to config validation, the CLI and the runner (models/registry.py).
"""

from __future__ import annotations

from .base import GuardModel
from .flexguard import FlexGuard
from .graniteguardian import GraniteGuardian
from .guardreasoner import GuardReasoner
from .llamaguard3 import LlamaGuard3
from .llamaguard4 import LlamaGuard4
from .qwen3guard import Qwen3Guard
from .reasoningshield import ReasoningShield
from .registry import families, family_names, get_model_class, presets, resolve
from .shieldgemma import ShieldGemma

__all__ = [
    "GuardModel",
    "ReasoningShield",
    "GuardReasoner",
    "FlexGuard",
    "LlamaGuard3",
    "LlamaGuard4",
    "Qwen3Guard",
    "GraniteGuardian",
    "ShieldGemma",
    "families",
    "family_names",
    "get_model_class",
    "presets",
    "resolve",
]
