"""Test helpers: tiny offline models of each guard's model family (``build_tiny_model``), the guard
models' own chat templates (``guard_templates``) and ``script_completion`` to make a tiny model write
a chosen verdict."""

from __future__ import annotations

from .chat_templates import LLAMA32_CHAT_TEMPLATE, QWEN3_CHAT_TEMPLATE
from .tiny import FAMILIES, build_tiny_model, script_completion
from .tokenizers import (
    GEMMA_SPECIAL_TOKENS,
    GRANITE_SPECIAL_TOKENS,
    LLAMA3_SPECIAL_TOKENS,
    LLAMA4_SPECIAL_TOKENS,
    QWEN3_ADDED_TOKENS,
)

__all__ = [
    "FAMILIES",
    "GEMMA_SPECIAL_TOKENS",
    "GRANITE_SPECIAL_TOKENS",
    "LLAMA32_CHAT_TEMPLATE",
    "LLAMA3_SPECIAL_TOKENS",
    "LLAMA4_SPECIAL_TOKENS",
    "QWEN3_ADDED_TOKENS",
    "QWEN3_CHAT_TEMPLATE",
    "build_tiny_model",
    "script_completion",
]
