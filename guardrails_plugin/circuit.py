"""Moved to ``guardrails_plugin.engines.breaker`` (the breaker wraps engines); this path keeps
``from guardrails_plugin.circuit import CircuitBreaker`` working."""

from .engines.breaker import STATE_CODES, BreakerEngine, CircuitBreaker, CircuitConfig, CircuitState

__all__ = ["STATE_CODES", "BreakerEngine", "CircuitBreaker", "CircuitConfig", "CircuitState"]
