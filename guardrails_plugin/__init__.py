"""guardrails-plugin: local GPU safety-guard models in the path of LLM agents.

Checks the user prompt, the reasoning trace (while it streams) and the final response with open
guard models (ReasoningShield, GuardReasoner, FlexGuard) and applies a policy: allow, block,
redact or escalate.
"""

from .config import GuardConfig, GuardModelConfig, StageConfig
from .errors import (
    GuardConfigError,
    GuardEngineError,
    GuardError,
    GuardInputError,
    GuardrailViolation,
    GuardTimeoutError,
)
from .guard import Guard
from .types import Action, Decision, FailureKind, GuardRequest, Stage, Verdict

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Decision",
    "FailureKind",
    "Guard",
    "GuardConfig",
    "GuardConfigError",
    "GuardEngineError",
    "GuardError",
    "GuardInputError",
    "GuardModelConfig",
    "GuardRequest",
    "GuardTimeoutError",
    "GuardrailViolation",
    "Stage",
    "StageConfig",
    "Verdict",
    "__version__",
]
