"""Test helpers: tiny offline models of each guard's model family (``build_tiny_model``)."""

from __future__ import annotations

from .tiny import (
    LLAMA3_SPECIAL_TOKENS,
    LLAMA32_CHAT_TEMPLATE,
    QWEN3_ADDED_TOKENS,
    QWEN3_CHAT_TEMPLATE,
    build_tiny_model,
)

__all__ = [
    "LLAMA32_CHAT_TEMPLATE",
    "LLAMA3_SPECIAL_TOKENS",
    "QWEN3_ADDED_TOKENS",
    "QWEN3_CHAT_TEMPLATE",
    "build_tiny_model",
]
