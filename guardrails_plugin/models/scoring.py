"""Reading fast scores: what a family's forced-prefix probabilities say as a Verdict.

**Fast scoring** (``GuardConfig(mode="fast")``, opt-in): one forward pass per guard input with the
guard's answer forced up to the verdict position; the verdict is read from the next-token
probabilities and gives a continuous risk. It skips the guard's reasoning, which the guards were
trained to write first, so **its accuracy against full generation is unknown**: it has not been
measured (no real guard weights were available when it was written) and must be measured on labelled
data (``guardrails-plugin eval``) before anyone relies on it. The cascade and the pipeline that runs
both live in runner.py.

What is forced is each family's business: ``GuardModel.fast_spec`` in the family's own file
(models/*.py) builds a ``FastSpec`` (models/fast.py). A family without one is a configuration error
when the Guard is built (``GuardModel.from_config``), not a verdict per check. An engine that cannot
run a spec (``Engine.score`` raises ScoringUnsupported: the scripted engine, or a raw prefix over
HTTP) gets full generation instead.

Reading is "unreadable" (a parse failure, so the stage's fail mode applies) when the protocol's answer
tokens hold less than ``MIN_MASS`` of the next-token probability: the guard did not accept the forced
format. Random-weight test models always land there.
"""

from __future__ import annotations

import json

from ..types import GuardRequest, Stage, Verdict
from .base import GuardModel
from .fast import FAST_NOTE, FastReading, FastSpec

#: protocol answer tokens must hold at least this much next-token probability to count as a verdict
MIN_MASS = 0.2


def spec_for(model: GuardModel, request: GuardRequest) -> FastSpec:
    """The fast-scoring spec of ``model`` for ``request`` (the family's ``fast_spec``). Raises
    NotImplementedError for a family without one."""
    return model.fast_spec(request)


def to_verdict(model: GuardModel, reading: FastReading, stage: Stage, *, min_mass: float = MIN_MASS) -> Verdict:
    """The Verdict a fast reading gives; unparseable (the stage's fail mode) when the protocol's
    answer tokens hold less than ``min_mass`` of the probability."""
    raw = json.dumps({"fast": True, "probs": {k: round(v, 6) for k, v in reading.probs.items()},
                      "mass": round(reading.mass, 6)})
    if reading.risk is None or reading.mass < min_mass:
        why = reading.why or (
            f"fast score unreadable: the protocol's answer tokens hold {reading.mass:.3f} of the "
            f"next-token probability (< {min_mass})"
        )
        return model.unparseable(raw, stage, why)
    shown = ", ".join(f"P({k})={v:.3f}" for k, v in reading.probs.items())
    return Verdict(
        guard=model.name,
        stage=stage,
        risk=reading.risk,
        harmful=reading.risk >= 0.5,
        categories=list(reading.categories),
        label=reading.label,
        refusal=reading.refusal,
        rationale=f"{FAST_NOTE}: {shown} (mass {reading.mass:.3f})",
        raw_output=raw,
    )


__all__ = ["FAST_NOTE", "MIN_MASS", "FastReading", "FastSpec", "spec_for", "to_verdict"]
