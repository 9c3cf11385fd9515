"""Old home of the evaluation tools, kept so existing imports work; the code lives in
``guardrails_plugin.eval`` (data, run, metrics, calibration, report)."""

from __future__ import annotations

from .eval import *  # noqa: F403
from .eval import __all__  # noqa: F401
