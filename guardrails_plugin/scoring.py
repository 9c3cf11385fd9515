"""Fast scoring and the cascade.

**Fast scoring** (``GuardConfig(mode="fast")``, opt-in): one forward pass per guard input with the
guard's answer forced up to the verdict position; the verdict is read from the next-token
probabilities and gives a continuous risk. It skips the guard's reasoning, which the guards were
trained to write first, so **its accuracy against full generation is unknown**: it has not been
measured (no real guard weights were available when it was written) and must be measured on labelled
data (``guardrails-plugin eval``) before anyone relies on it.

**Cascade** (``mode="cascade"``): fast score first; a window whose fast risk falls inside
``GuardConfig.cascade_band`` (inclusive), or whose fast score could not be read, gets the full
generation, and the full verdict replaces the fast one. Risks outside the band keep the fast verdict.

What is forced is each family's business: ``GuardModel.fast_spec`` in the family's own file
(models/*.py) builds a ``FastSpec`` (models/fast.py). A family without one, or one whose spec cannot
run on the configured engine (``FastSpec.raw_prefix`` specs need an in-process engine), is a
configuration error when the Guard is built (``GuardModel.from_config``), not a verdict per check.

Reading is "unreadable" (a parse failure, so the stage's fail mode applies) when the protocol's answer
tokens hold less than ``MIN_MASS`` of the next-token probability: the guard did not accept the forced
format. Random-weight test models always land there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .engines.logprobs import ScoreResult
from .models.fast import FAST_NOTE, FastReading, FastSpec
from .models.flexguard import CATEGORIES as FLEXGUARD_CODES
from .models.guardreasoner import FAST_LABELS as GUARDREASONER_LABELS
from .models.guardreasoner import FAST_PREFIX as GUARDREASONER_PREFIX
from .models.reasoningshield import FAST_PREFIX as REASONINGSHIELD_PREFIX
from .runtime import we_are_cancelled
from .types import FailureKind, GuardRequest, Stage, Verdict
from .windowing import split_windows

if TYPE_CHECKING:
    from .guard import Guard
    from .models.base import GuardModel

log = logging.getLogger("guardrails_plugin")

#: protocol answer tokens must hold at least this much next-token probability to count as a verdict
MIN_MASS = 0.2


def spec_for(model: GuardModel, request: GuardRequest) -> FastSpec:
    """The fast-scoring spec of ``model`` for ``request`` (the family's ``fast_spec``). Raises
    NotImplementedError for a family without one."""
    return model.fast_spec(request)


# Kept for callers of the per-family functions that lived here before the specs moved into the
# family files.
def reasoningshield_spec(model: GuardModel, request: GuardRequest) -> FastSpec:
    return model.fast_spec(request)


guardreasoner_spec = flexguard_spec = reasoningshield_spec


def engine_renders_locally(engine: Any) -> bool:
    """True for engines that render the prompt text themselves (TransformersEngine, scripted test
    engines), so a forced prefix can follow the rendered text verbatim (``FastSpec.raw_prefix``)."""
    from .engines.scripted import ScriptedEngine

    inner = getattr(engine, "inner", engine)
    return callable(getattr(inner, "request_ids", None)) or isinstance(inner, ScriptedEngine)


def _raw_prefix_problem(model: GuardModel, specs: Sequence[FastSpec], engine: Any) -> str | None:
    if any(sp.raw_prefix for sp in specs) and not engine_renders_locally(engine):
        return (f"{model.family} fast scoring forces text right after the rendered prompt, which "
                f"{getattr(engine, 'name', type(engine).__name__)} cannot send (a continued assistant "
                "message would become part of the judged conversation); use the transformers engine")
    return None


def to_verdict(model: GuardModel, reading: FastReading, stage: Stage, *, min_mass: float = MIN_MASS) -> Verdict:
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


# ---------------------------------------------------------------------------------- running


@dataclass
class ScoringStats:
    """Counters of one Guard's fast/cascade work (the bench reads escalation rates from here)."""

    fast_verdicts: int = 0  #: windows fast-scored
    escalated: int = 0  #: of those, sent to full generation by the cascade
    unreadable: int = 0  #: fast scores that could not be read
    full_fallbacks: int = 0  #: windows sent to full generation because the engine cannot score

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.fast_verdicts if self.fast_verdicts else 0.0


def stats(guard: Guard) -> ScoringStats:
    """The ScoringStats of ``guard`` (created on first use)."""
    st = guard.__dict__.get("_scoring_stats")
    if st is None:
        st = guard.__dict__["_scoring_stats"] = ScoringStats()
    return st


def session_key(request: GuardRequest, name: str, window: int) -> str | None:
    """KV-reuse key for one guard model and window of a monitor's checks (``metadata["session_id"]``)."""
    sid = request.metadata.get("session_id")
    return f"{sid}|{name}|{window}" if sid else None


def in_band(risk: float, band: tuple[float, float]) -> bool:
    lo, hi = band
    return lo <= risk <= hi


async def run_scored(guard: Guard, name: str, request: GuardRequest) -> list[Verdict]:
    """Verdicts of guard model ``name`` under ``guard.config.mode`` ("fast" or "cascade")."""
    cfg = guard.config
    model = guard.model(name)
    mc = cfg.models[name]
    try:
        engine = await guard._aengine(name)
    except Exception as exc:  # e.g. weights missing: the stage's fail mode, never an exception
        log.exception("engine for %s could not be built", name)
        return [guard._failure(name, request.stage, FailureKind.ENGINE_ERROR, repr(exc))]
    st = stats(guard)
    request = guard.fit_context(name, request)
    text = request.target
    spans = split_windows(text, mc.max_input_chars, mc.window_overlap_chars)
    if not callable(getattr(engine, "score", None)):
        # Never less checking than asked for: an engine that cannot score generates.
        st.full_fallbacks += len(spans)
        log.warning("engine %s cannot fast-score; %s runs full generation", getattr(engine, "name", engine), name)
        return await guard._run_full(name, request)
    try:
        specs = []
        for i, (s, e) in enumerate(spans):
            spec = spec_for(model, request.with_target(text[s:e]))
            sid = session_key(request, name, i)
            if sid is not None:
                spec = dataclasses.replace(spec, score=dataclasses.replace(spec.score, session_id=sid))
            specs.append(spec)
    except Exception as exc:
        log.exception("guard %s could not build its fast-score input", name)
        return [guard._failure(name, request.stage, FailureKind.BAD_INPUT, repr(exc))]
    problem = _raw_prefix_problem(model, specs, engine)
    if problem:  # e.g. Guard(engine=OpenAIEngine(...)) overriding a transformers config
        return [guard._failure(name, request.stage, FailureKind.ENGINE_ERROR, problem)]

    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        pre_idx = [i for i, sp in enumerate(specs) if sp.pre is not None]
        if pre_idx:
            texts = await asyncio.wait_for(
                engine.generate([specs[i].pre for i in pre_idx], timeout=mc.timeout_s), mc.timeout_s
            )
            for i, t in zip(pre_idx, texts, strict=True):
                specs[i] = specs[i].with_pre_text(t)
        left = max(1e-3, mc.timeout_s - (loop.time() - start))
        results = await asyncio.wait_for(engine.score([sp.score for sp in specs], timeout=left), left)
    except asyncio.CancelledError as exc:
        if we_are_cancelled():
            raise
        return guard._engine_failure(name, request.stage, exc, mc.timeout_s)
    except Exception as exc:
        return guard._engine_failure(name, request.stage, exc, mc.timeout_s)
    latency_ms = (loop.time() - start) * 1e3
    # A misbehaving engine (None, a bare result, a short batch) is an engine failure.
    bad_batch = guard._batch_error(results, len(specs), "scores")
    if bad_batch:
        return [guard._failure(name, request.stage, FailureKind.ENGINE_ERROR, bad_batch)]

    verdicts: list[Verdict] = []
    for (s, e), spec, res in zip(spans, specs, results, strict=True):
        try:
            v = to_verdict(model, spec.read(res), request.stage)
        except Exception as exc:  # reading never raises into the caller
            v = model.unparseable("", request.stage, f"fast score reader error: {exc!r}")
        st.fast_verdicts += 1
        st.unreadable += 0 if v.parse_ok else 1
        verdicts.append(v.model_copy(update={"latency_ms": latency_ms, "window": (s, e), "stage": request.stage}))

    if cfg.mode != "cascade":
        return verdicts
    escalate = [i for i, v in enumerate(verdicts) if not v.ok or in_band(v.risk, cfg.cascade_band)]
    if not escalate:
        return verdicts
    st.escalated += len(escalate)
    fulls = await asyncio.gather(
        *(guard._run_full(name, request.with_target(text[spans[i][0] : spans[i][1]]), window_index=i)
          for i in escalate)
    )
    for i, vs in zip(escalate, fulls, strict=True):
        s, e = spans[i]
        # One window in, one verdict out (its text fits the guard's budget); failures carry no window.
        full = vs[0] if vs else verdicts[i]
        verdicts[i] = full.model_copy(
            update={"window": (s, e), "latency_ms": full.latency_ms + verdicts[i].latency_ms}
        )
    return verdicts


async def score_texts(
    engine: Any, model: GuardModel, requests: Sequence[GuardRequest], *, timeout: float | None = None
) -> list[Verdict]:
    """Fast-score GuardRequests straight on an engine (no Guard, no windowing): benches and evals."""
    specs = [spec_for(model, r) for r in requests]
    problem = _raw_prefix_problem(model, specs, engine)
    if problem:
        raise ValueError(problem)
    pre_idx = [i for i, sp in enumerate(specs) if sp.pre is not None]
    if pre_idx:
        texts = await engine.generate([specs[i].pre for i in pre_idx], timeout=timeout)
        for i, t in zip(pre_idx, texts, strict=True):
            specs[i] = specs[i].with_pre_text(t)
    results = await engine.score([sp.score for sp in specs], timeout=timeout)
    return [to_verdict(model, sp.read(res), r.stage) for sp, res, r in zip(specs, results, requests, strict=True)]


__all__ = [
    "FAST_NOTE",
    "FLEXGUARD_CODES",
    "GUARDREASONER_LABELS",
    "GUARDREASONER_PREFIX",
    "REASONINGSHIELD_PREFIX",
    "ScoreResult",
    "engine_renders_locally",
    "FastReading",
    "FastSpec",
    "MIN_MASS",
    "ScoringStats",
    "flexguard_spec",
    "guardreasoner_spec",
    "in_band",
    "reasoningshield_spec",
    "run_scored",
    "score_texts",
    "session_key",
    "spec_for",
    "stats",
    "to_verdict",
]
