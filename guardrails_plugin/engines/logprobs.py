"""The seam for fast scoring: one prefill with the guard's answer forced up to the verdict position,
read back as next-token log-probabilities instead of generated text.

The types live in engines/base.py beside the ``Engine`` protocol whose ``score`` takes them; this
module keeps their import path. What the probabilities mean is the guard adapter's business
(models/*.py ``fast_spec``, read by runner.py); engines only measure them.
"""

from __future__ import annotations

from .base import Distribution, ScoreRequest, ScoreResult

__all__ = ["Distribution", "ScoreRequest", "ScoreResult"]
