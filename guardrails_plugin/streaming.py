"""Moved to ``guardrails_plugin.stream.extract``; this path keeps old imports working."""

from .stream.extract import Part, PartKind, approx_tokens, extract_deltas, parts_of, tool_call_text

__all__ = ["Part", "PartKind", "approx_tokens", "extract_deltas", "parts_of", "tool_call_text"]
