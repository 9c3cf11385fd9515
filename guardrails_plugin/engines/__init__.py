"""Engines produce guard completions: in-process transformers, an OpenAI-compatible server (vLLM,
SGLang, ``transformers serve``), or canned outputs for tests.

Heavy engines are imported lazily so ``import guardrails_plugin`` does not import torch. Which
engine a configured guard model runs on, and where its weights come from, is decided above this
package (guardrails_plugin/loading.py): engines know nothing of the configuration or the guard
families.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Engine, EngineBase, GenerationRequest, SessionKey, as_engine, render_plain
from .breaker import BreakerEngine, CircuitBreaker
from .scripted import ScriptedEngine

if TYPE_CHECKING:
    from .openai_engine import OpenAIEngine
    from .transformers import TransformersEngine

__all__ = [
    "BreakerEngine",
    "CircuitBreaker",
    "Engine",
    "EngineBase",
    "GenerationRequest",
    "OpenAIEngine",
    "ScriptedEngine",
    "SessionKey",
    "TransformersEngine",
    "as_engine",
    "render_plain",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersEngine":
        from .transformers import TransformersEngine

        return TransformersEngine
    if name == "OpenAIEngine":
        from .openai_engine import OpenAIEngine

        return OpenAIEngine
    raise AttributeError(name)
