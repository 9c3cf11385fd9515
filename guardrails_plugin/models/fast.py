"""What a family's fast-scoring spec is made of (run by guardrails_plugin/runner.py, read by scoring.py).

Fast scoring: one forward pass with the guard's answer forced up to the verdict position; the
verdict is read from the next-token probabilities. Each family file builds its own ``FastSpec``
(``GuardModel.fast_spec``); this module only holds the shared shapes, so families depend on it and
the runner depends on families, never the other way round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engines.base import GenerationRequest, ScoreRequest, ScoreResult

FAST_NOTE = "fast score (one forward pass; accuracy against full generation not measured)"


@dataclass
class FastReading:
    """What the probabilities say: a risk (None when unreadable) and the numbers behind it."""

    risk: float | None
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    mass: float = 0.0
    categories: list[str] = field(default_factory=list)
    refusal: bool | None = None
    why: str | None = None


@dataclass(frozen=True)
class FastSpec:
    """How one guard input is fast-scored.

    ``score`` is the forward pass; ``read`` turns its result into a FastReading. With ``pre``, a
    short greedy generation runs first and its text, plus ``pre_suffix``, is appended to the forced
    prefix of ``score.request`` (GuardReasoner's Request/Completion lines before ``Response:``).

    ``raw_prefix``: the forced prefix must follow the rendered prompt text itself. True for guards
    whose chat template embeds the conversation in an instruction (Llama Guard, Qwen3Guard): an
    OpenAI-compatible server can only send a prefix as a continued assistant *message*, which those
    templates would render as one more turn of the judged conversation. Only engines that render
    in-process (TransformersEngine) can run such a spec.
    """

    score: ScoreRequest
    read: Callable[[ScoreResult], FastReading]
    pre: GenerationRequest | None = None
    pre_suffix: str = ""
    read_pre: Callable[[str], dict[str, Any]] | None = None
    raw_prefix: bool = False

    def with_pre_text(self, text: str) -> FastSpec:
        req = self.score.request
        forced = req.assistant_prefix + text + self.pre_suffix
        extra = self.read_pre(text) if self.read_pre else {}
        read = self.read
        if extra:
            def read(res: ScoreResult, _r: Callable[[ScoreResult], FastReading] = self.read) -> FastReading:
                return dataclasses.replace(_r(res), **extra)
        return dataclasses.replace(
            self,
            score=dataclasses.replace(self.score, request=dataclasses.replace(req, assistant_prefix=forced)),
            read=read,
            pre=None,
        )


def weighted(probs: Mapping[str, float], risks: Mapping[str, float]) -> FastReading:
    """Risk = probability-weighted mean of the answers' risks, over the protocol's answer tokens."""
    probs = dict(probs)
    mass = sum(probs.values())
    if mass <= 0:
        return FastReading(None, probs=probs, mass=0.0, why="no probability on the protocol's answer tokens")
    risk = sum(probs[k] * risks[k] for k in probs) / mass
    label = max(probs, key=probs.__getitem__)
    return FastReading(min(1.0, max(0.0, risk)), label=label, probs=probs, mass=mass)


def grouped(res_probs: Callable[[str, tuple[str, ...]], float], groups: Mapping[str, tuple[str, ...]]) -> dict[str, float]:
    """P(answer) for answers that several token spellings stand for (``"yes": ("Yes", " yes")``):
    the sum over each group's candidates, every candidate scored against all the others."""
    every = tuple(c for cands in groups.values() for c in cands)
    return {name: sum(res_probs(c, every) for c in cands) for name, cands in groups.items()}


__all__ = ["FAST_NOTE", "FastReading", "FastSpec", "grouped", "weighted"]
