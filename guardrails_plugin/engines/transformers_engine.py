"""Old home of TransformersEngine, kept so existing imports work; the code lives in
``guardrails_plugin.engines.transformers``."""

from .transformers import TransformersEngine

__all__ = ["TransformersEngine"]
