"""The seam for fast scoring: one prefill with the guard's answer forced up to the verdict position,
read back as next-token log-probabilities instead of generated text.

Engines that can score implement ``async score(requests, *, timeout=None) -> list[ScoreResult]``
(TransformersEngine in-process, OpenAIEngine through ``logprobs``). What the probabilities mean is
the guard adapter's business (guardrails_plugin/scoring.py); engines only measure them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .base import GenerationRequest


@dataclass(frozen=True)
class ScoreRequest:
    """Score the next token after ``request`` (its ``assistant_prefix`` is the forced answer).

    ``candidates``: continuations whose first-token log-probability is wanted at the verdict position
    (an engine with a tokenizer computes them exactly; a remote one looks them up in the top-k).
    ``probe``: optional text teacher-forced after the prefix; a second distribution is read after it
    with ``probe_candidates`` (ReasoningShield reads P("." | "0") to tell 0.5 from 0 in the same
    forward pass). ``session_id``: streaming checks of one growing text share a KV cache (engines
    that keep one; others ignore it).
    """

    request: GenerationRequest
    candidates: tuple[str, ...] = ()
    probe: str = ""
    probe_candidates: tuple[str, ...] = ()
    top_k: int = 20
    session_id: str | None = None


@dataclass
class Distribution:
    """Next-token log-probabilities at one position: the top ``k`` tokens (decoded text -> logprob)
    and, where the engine could compute them, the exact first-token logprob of each candidate."""

    top: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, float] = field(default_factory=dict)

    def prob(self, candidate: str, others: tuple[str, ...] = ()) -> float:
        """P(the next token starts ``candidate``). Exact when the engine gave it; otherwise the sum
        over top-k tokens that begin ``candidate`` and no other candidate (a token such as " "
        that begins several is ambiguous and counts for none)."""
        if candidate in self.candidates:
            return math.exp(self.candidates[candidate])
        total = 0.0
        for tok, lp in self.top.items():
            if tok and candidate.startswith(tok) and not any(o.startswith(tok) for o in others if o != candidate):
                total += math.exp(lp)
        return min(1.0, total)


@dataclass
class ScoreResult:
    """What one ScoreRequest measured."""

    at_prefix: Distribution
    after_probe: Distribution | None = None
    prompt_tokens: int = 0  #: tokens in the scored input
    reused_tokens: int = 0  #: of those, served from a kept KV cache (not recomputed)


__all__ = ["Distribution", "ScoreRequest", "ScoreResult"]
