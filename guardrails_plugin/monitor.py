"""Moved to ``guardrails_plugin.stream.monitor``; this path keeps old imports working."""

from .stream.monitor import MonitorStats, ReasoningMonitor, StreamChecks

__all__ = ["MonitorStats", "ReasoningMonitor", "StreamChecks"]
