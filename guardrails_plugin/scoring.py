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

What is forced, per family (``spec_for``):

* **ReasoningShield**: the assistant turn is forced to ``"Judgment": `` (trailing space: Llama-3's
  pre-tokenizer splits ``": 1"`` into ``":``, `` ``, ``1``, so the digit is the next token). No forced
  ``"Analysis": ``: an empty or placeholder analysis would be text the model conditions on (it reads
  as "nothing to analyse" and biases towards 0); forcing the judgment key directly adds nothing but the
  key. Risk = (P(1) + 0.5 P(0.5)) / (P(1) + P(0) + P(0.5)); P(0.5) = P("0") P("." | "0") is read in
  the same forward pass by teacher-forcing the probe "0" after the prefix.
* **GuardReasoner**, prompt stage: forced to ``Answers: \\nRequest:``; risk = P(" harmful") /
  (P(" harmful") + P(" unharmful")). No trailing space in the forced text: " harmful" is one
  pre-token, so the space belongs to the answer token. Response (and reasoning) stage: the few tokens
  of the Request and Completion lines are decoded greedily first (max 24 tokens, stop at
  "Response"), then ``Response:`` is forced and scored the same way; the refusal flag is read from the
  decoded Completion line.
* **FlexGuard**: ``enable_thinking=False``, so Qwen3's own chat template emits the empty think block
  (``<think>\\n\\n</think>\\n\\n``) as template structure (trusted tokens; no user text ever becomes an
  added token). The next token is the CATEGORY line: risk = 1 - P(SAFE) over the protocol's category
  tokens. That is the probability that the guard flags anything, not its graded 0-100 RISK_SCORE: the
  strictness thresholds apply to it unchanged, and the cascade's full generation gives the graded score.

Reading is "unreadable" (a parse failure, so the stage's fail mode applies) when the protocol's answer
tokens hold less than ``MIN_MASS`` of the next-token probability: the guard did not accept the forced
format. Random-weight test models always land there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engines.base import GenerationRequest
from .engines.logprobs import ScoreRequest, ScoreResult
from .runtime import we_are_cancelled
from .types import FailureKind, GuardRequest, Stage, Verdict
from .windowing import split_windows

if TYPE_CHECKING:
    from .guard import Guard
    from .models.base import GuardModel

log = logging.getLogger("guardrails_plugin")

#: protocol answer tokens must hold at least this much next-token probability to count as a verdict
MIN_MASS = 0.2

REASONINGSHIELD_PREFIX = '"Judgment": '
GUARDREASONER_PREFIX = "Answers: \nRequest:"
GUARDREASONER_LABELS = (" harmful", " unharmful")
FLEXGUARD_CODES = ("VIO", "ILG", "SEX", "INF", "DIS", "MIS", "JAIL")
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
    """

    score: ScoreRequest
    read: Callable[[ScoreResult], FastReading]
    pre: GenerationRequest | None = None
    pre_suffix: str = ""
    read_pre: Callable[[str], dict[str, Any]] | None = None

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


# ---------------------------------------------------------------------------------- family specs


def _binary(probs: dict[str, float], risks: dict[str, float]) -> FastReading:
    mass = sum(probs.values())
    if mass <= 0:
        return FastReading(None, probs=probs, mass=0.0, why="no probability on the protocol's answer tokens")
    risk = sum(probs[k] * risks[k] for k in probs) / mass
    label = max(probs, key=probs.__getitem__)
    return FastReading(min(1.0, max(0.0, risk)), label=label, probs=probs, mass=mass)


def _read_reasoningshield(res: ScoreResult) -> FastReading:
    cands = ("0", "1")
    p1 = res.at_prefix.prob("1", cands)
    p0x = res.at_prefix.prob("0", cands)
    q = res.after_probe.prob(".", (".",)) if res.after_probe is not None else 0.0
    probs = {"0": p0x * (1.0 - q), "0.5": p0x * q, "1": p1}
    return _binary(probs, {"0": 0.0, "0.5": 0.5, "1": 1.0})


def reasoningshield_spec(model: GuardModel, request: GuardRequest) -> FastSpec:
    gen = model.build_input(request)
    req = dataclasses.replace(gen, assistant_prefix=REASONINGSHIELD_PREFIX, max_new_tokens=1)
    return FastSpec(
        ScoreRequest(req, candidates=("0", "1"), probe="0", probe_candidates=(".",)),
        read=_read_reasoningshield,
    )


def _read_guardreasoner(res: ScoreResult) -> FastReading:
    h, u = GUARDREASONER_LABELS
    probs = {"harmful": res.at_prefix.prob(h, GUARDREASONER_LABELS),
             "unharmful": res.at_prefix.prob(u, GUARDREASONER_LABELS)}
    return _binary(probs, {"harmful": 1.0, "unharmful": 0.0})


_COMPLETION = re.compile(r"Completion:\s*(refusal|compliance)", re.IGNORECASE)


def _read_gr_lines(text: str) -> dict[str, Any]:
    m = _COMPLETION.search(text)
    return {"refusal": m.group(1).lower() == "refusal"} if m else {}


def guardreasoner_spec(model: GuardModel, request: GuardRequest) -> FastSpec:
    gen = model.build_input(request)
    forced = dataclasses.replace(gen, assistant_prefix=GUARDREASONER_PREFIX, max_new_tokens=1)
    score = ScoreRequest(forced, candidates=GUARDREASONER_LABELS)
    if request.stage is Stage.PROMPT:
        return FastSpec(score, read=_read_guardreasoner)
    # Response field: decode " harmful\nCompletion: refusal\n" greedily, then force "Response:".
    pre = dataclasses.replace(gen, assistant_prefix=GUARDREASONER_PREFIX, max_new_tokens=24, stop=("Response",))
    return FastSpec(score, read=_read_guardreasoner, pre=pre, pre_suffix="Response:", read_pre=_read_gr_lines)


def _read_flexguard(res: ScoreResult) -> FastReading:
    cands = ("SAFE", *FLEXGUARD_CODES)
    probs = {c: res.at_prefix.prob(c, cands) for c in cands}
    mass = sum(probs.values())
    if mass <= 0:
        return FastReading(None, probs=probs, why="no probability on the CATEGORY tokens")
    risk = 1.0 - probs["SAFE"] / mass
    cats = [c for c in FLEXGUARD_CODES if probs[c] / mass >= 0.2]
    label = max(probs, key=probs.__getitem__)
    return FastReading(min(1.0, max(0.0, risk)), label=label, probs=probs, mass=mass, categories=cats)


def flexguard_spec(model: GuardModel, request: GuardRequest) -> FastSpec:
    gen = model.build_input(request)
    kwargs = {**dict(gen.chat_template_kwargs), "enable_thinking": False}  # template's empty think block
    req = dataclasses.replace(gen, chat_template_kwargs=kwargs, max_new_tokens=1)
    return FastSpec(ScoreRequest(req, candidates=("SAFE", *FLEXGUARD_CODES)), read=_read_flexguard)


_SPECS: dict[str, Callable[[GuardModel, GuardRequest], FastSpec]] = {
    "reasoningshield": reasoningshield_spec,
    "guardreasoner": guardreasoner_spec,
    "flexguard": flexguard_spec,
}


def spec_for(model: GuardModel, request: GuardRequest) -> FastSpec:
    """The fast-scoring spec of ``model`` (by family) for ``request``."""
    fn = getattr(model, "fast_spec", None)
    if fn is not None:
        return fn(request)
    try:
        return _SPECS[model.family](model, request)
    except KeyError:
        raise NotImplementedError(f"no fast scoring for guard family {model.family!r}") from None


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
    pre_idx = [i for i, sp in enumerate(specs) if sp.pre is not None]
    if pre_idx:
        texts = await engine.generate([specs[i].pre for i in pre_idx], timeout=timeout)
        for i, t in zip(pre_idx, texts, strict=True):
            specs[i] = specs[i].with_pre_text(t)
    results = await engine.score([sp.score for sp in specs], timeout=timeout)
    return [to_verdict(model, sp.read(res), r.stage) for sp, res, r in zip(specs, results, requests, strict=True)]


__all__ = [
    "FAST_NOTE",
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
