"""Exceptions and failure kinds. Every error the library raises on purpose is a GuardError.

This module is the bottom of the package's import graph: it imports nothing from the package, so
every other module may import it (types.py re-exports ``FailureKind``).
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class FailureKind(str, Enum):
    """Why a guard could not give a verdict. Carried on Verdict and Decision so callers can tell
    a real judgement from a fail-mode outcome, and on GuardEngineError (``kind``) so the runner
    maps an engine failure without reading its message."""

    ENGINE_ERROR = "engine_error"  #: the engine raised (down, reset, HTTP 5xx, bad reply)
    TIMEOUT = "timeout"  #: the per-call deadline passed
    UNPARSEABLE = "unparseable"  #: the guard answered but not in its protocol's format
    CIRCUIT_OPEN = "circuit_open"  #: the engine's circuit breaker refused the call
    BAD_INPUT = "bad_input"  #: the content could not be turned into a guard input

    def __str__(self) -> str:
        return self.value


class GuardError(Exception):
    """Base class of the library's own errors."""


class GuardrailViolation(GuardError):
    """Content was blocked (or held for review). ``decision`` is the ``types.Decision`` that
    blocked it (annotated loosely: this module sits below types.py in the import graph)."""

    def __init__(self, decision: Any, message: str | None = None):
        self.decision = decision
        super().__init__(message or f"{decision.stage} blocked: {decision.reason}")


class GuardEngineError(GuardError):
    """The engine could not produce a completion (down, timeout, HTTP error, crash). ``kind`` is
    the FailureKind a check that meets it records."""

    def __init__(self, message: str, *, kind: FailureKind = FailureKind.ENGINE_ERROR):
        self.kind = FailureKind(kind)
        super().__init__(message)


class GuardTimeoutError(GuardEngineError):
    """The engine did not answer within the deadline."""

    def __init__(self, message: str):
        super().__init__(message, kind=FailureKind.TIMEOUT)


class ScoringUnsupported(GuardError, NotImplementedError):
    """An engine cannot fast-score this request (``Engine.score``): it has no scoring at all
    (ScriptedEngine), or cannot send the forced prefix the guard family needs (a raw prefix over
    an OpenAI-compatible chat endpoint). Not an engine failure: the runner generates instead."""


class GuardConfigError(GuardError, ValueError):
    """The configuration is invalid or names something that cannot be loaded."""


class GuardServerConfigError(GuardConfigError, GuardEngineError):
    """A guard server rejects the engine's configuration: it does not serve the model name sent
    (HTTP 404, e.g. ``served_model_name`` missing or wrong) or has no such endpoint. A configuration
    error (the CLI exits 2, ``Guard.warmup()`` raises it) that is also an engine failure, so a check
    that meets it ends in the stage's fail mode like any other engine error."""

    def __init__(self, message: str):
        GuardEngineError.__init__(self, message)


class GuardInputError(GuardError, TypeError):
    """The content handed to a check is of a type the guard cannot judge."""
