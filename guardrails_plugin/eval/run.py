"""Examples to ``Scored`` rows: a live guard (``run_guard``) or saved completions parsed by the
family's adapter (``score_predictions``), each folded by the configured policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import GuardConfig
from ..policy import Policy
from ..types import Action, Decision, GuardRequest, Stage, Verdict
from .data import Dataset, EvaluationError, Example


@dataclass
class Scored:
    """One example after the guard (or a saved completion) judged it."""

    example: Example
    action: str
    flagged: bool  #: what the configured policy did: BLOCK, REDACT or a held ESCALATE
    risk: float | None  #: worst risk of the real verdicts; None when no guard gave one
    failed: bool  #: some guard call failed (unparseable, engine error, timeout)
    failure: str | None
    refusal: bool | None
    categories: list[str]
    reason: str
    latency_ms: float | None
    completion: str | None

    @property
    def predicted(self) -> bool:
        """The decision as configured (the primary metric)."""
        return self.flagged


def _scored(example: Example, decision: Decision, latency_ms: float | None) -> Scored:
    ok = [v for v in decision.verdicts if v.ok]
    refusals = [v.refusal for v in ok if v.refusal is not None]
    completion = decision.verdicts[0].raw_output if decision.verdicts else None
    return Scored(
        example=example,
        action=str(decision.action),
        flagged=decision.blocked or decision.action is Action.REDACT,
        risk=max((v.risk for v in ok), default=None),
        failed=any(not v.ok for v in decision.verdicts),
        failure=str(decision.failure) if decision.failure else next(
            (str(v.failure) for v in decision.verdicts if v.failure), None
        ),
        refusal=any(refusals) if refusals else None,
        categories=list(decision.categories),
        reason=decision.reason,
        latency_ms=latency_ms,
        completion=completion,
    )


def _request(example: Example, stage: Stage) -> GuardRequest:
    return GuardRequest(
        stage=stage,
        prompt=example.prompt,
        reasoning=example.reasoning if stage is Stage.REASONING else None,
        response=example.response if stage is Stage.RESPONSE else None,
    )


def score_predictions(
    dataset: Dataset,
    *,
    family: str = "guardreasoner",
    config: GuardConfig | None = None,
    stage: Stage | None = None,
) -> list[Scored]:
    """Score saved guard completions without running a model: each completion is parsed by the
    family's adapter (``GuardReasoner().parse(text, stage)``) and folded by the configured policy
    exactly as a live check would be."""
    if not dataset.has_completions:
        raise EvaluationError(
            f"{dataset.path}: no saved completions (a 'predict' / 'prediction' / 'completion' column)"
        )
    stage = stage or dataset.stage
    model = _adapter(family, config)
    policy = Policy(config or GuardConfig())
    out = []
    for e in dataset.examples:
        verdict: Verdict = model.parse(e.completion or "", stage)
        decision = policy.decide(_request(e, stage), [verdict.model_copy(update={"stage": stage})])
        out.append(_scored(e, decision, None))
    return out


def _adapter(family: str, config: GuardConfig | None) -> Any:
    """The adapter that parses saved completions: the config's guard model of that family when it
    has one (its options and model id: Granite's version and criteria, ShieldGemma's guideline,
    Qwen3Guard's controversial_risk), else the family's default (a preset name picks its variant)."""
    from ..models import resolve

    cls, hub = resolve(family)
    for name, mc in (config.models.items() if config else ()):
        if mc.family == cls.family:
            return cls.from_config(name, mc)
    return cls(model_id=hub)


async def run_guard(
    guard: Any,
    dataset: Dataset,
    *,
    stage: Stage | None = None,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[Scored]:
    """Check every example with ``guard`` (``batch_size`` concurrent ``acheck`` calls; engines
    micro-batch them). ``progress(n)`` is called as examples finish."""
    stage = stage or dataset.stage
    sem = asyncio.Semaphore(max(1, batch_size))
    results: list[Scored | None] = [None] * len(dataset.examples)

    async def one(i: int, e: Example) -> None:
        async with sem:
            t0 = time.perf_counter()
            decision = await guard.acheck(_request(e, stage))
            results[i] = _scored(e, decision, (time.perf_counter() - t0) * 1e3)
        if progress is not None:
            progress(1)

    await asyncio.gather(*(one(i, e) for i, e in enumerate(dataset.examples)))
    return [r for r in results if r is not None]

