"""Exceptions. Every error the library raises on purpose is a GuardError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import Decision


class GuardError(Exception):
    """Base class of the library's own errors."""


class GuardrailViolation(GuardError):
    """Content was blocked (or held for review). Carries the Decision that blocked it."""

    def __init__(self, decision: Decision, message: str | None = None):
        self.decision = decision
        super().__init__(message or f"{decision.stage} blocked: {decision.reason}")


class GuardEngineError(GuardError):
    """The engine could not produce a completion (down, timeout, HTTP error, crash)."""

    def __init__(self, message: str, *, kind: str = "engine_error", retryable: bool = False):
        self.kind = kind
        self.retryable = retryable
        super().__init__(message)


class GuardTimeoutError(GuardEngineError):
    """The engine did not answer within the deadline."""

    def __init__(self, message: str):
        super().__init__(message, kind="timeout", retryable=True)


class GuardParseError(GuardError):
    """A guard completion did not follow its protocol. Parsers return parse_ok=False instead of
    raising; this is raised only where a caller asks for strictness (e.g. ``Verdict`` required)."""

    def __init__(self, message: str, raw_output: str = ""):
        self.raw_output = raw_output
        super().__init__(message)


class GuardConfigError(GuardError, ValueError):
    """The configuration is invalid or names something that cannot be loaded."""


class GuardServerConfigError(GuardConfigError, GuardEngineError):
    """A guard server rejects the engine's configuration: it does not serve the model name sent
    (HTTP 404, e.g. ``served_model_name`` missing or wrong) or has no such endpoint. A configuration
    error (the CLI exits 2, ``Guard.warmup()`` raises it) that is also an engine failure, so a check
    that meets it ends in the stage's fail mode like any other engine error."""

    def __init__(self, message: str):
        GuardEngineError.__init__(self, message, kind="config", retryable=False)


class GuardInputError(GuardError, TypeError):
    """The content handed to a check is of a type the guard cannot judge."""
