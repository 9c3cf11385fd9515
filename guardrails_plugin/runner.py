"""The per-model pipeline: one guard model's verdicts on one request, in every mode.

* **full**: one generation per window, parsed by the family's parser.
* **fast** (``GuardConfig(mode="fast")``, opt-in): one forward pass per window with the guard's
  answer forced up to the verdict position; the verdict is read from next-token probabilities
  (the family's ``fast_spec``, read by scoring.py). Its accuracy against full generation has not
  been measured; see scoring.py.
* **cascade**: fast first; a window whose fast risk falls inside ``cascade_band`` (inclusive), or
  whose fast score could not be read, gets a full generation whose verdict replaces the fast one.

Done once here, for all three:

* **windows**: a text longer than the guard's input budget becomes overlapping windows
  (windowing.py), one verdict each; the query carried as context is clipped to a quarter of the
  budget so every window still fits.
* **session keys**: a stream monitor's checks carry ``metadata["session_id"]``; each window of
  each guard model then gets a ``SessionKey(stream, guard, window)``, so an engine that keeps KV
  caches (TransformersEngine) reuses the previous check's prefix and routers keep a stream on one
  replica (OpenAIEngine sends ``key.stream``).
* **judged once**: a stream's closed windows (all but the last) keep the verdict of the check that
  first judged them (judged.py), so each later check judges the open tail window (plus, once, a
  window that closed since the check before), not the whole trace; a closed window's KV cache is
  released once it is judged.
* **deadlines**: each engine phase (fast: pre-generation and scoring together; full) has
  ``timeout_s`` in all.
* **failures**: whatever goes wrong (engine error, timeout, open circuit, malformed batch, an
  adapter that cannot build its input) becomes a failure verdict with its ``FailureKind``, which
  the policy turns into the stage's fail mode. Only the caller's own cancellation propagates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .config import GuardConfig, GuardModelConfig
from .engines.base import Engine, GenerationRequest, SessionKey
from .errors import FailureKind, GuardConfigError, GuardEngineError, GuardTimeoutError, ScoringUnsupported
from .loading import ModelPool
from .models.base import GuardModel
from .models.fast import FastSpec
from .models.scoring import to_verdict
from .runtime import we_are_cancelled
from .stream.judged import JudgedWindows, context_digest
from .types import GuardRequest, Stage, Verdict
from .windowing import Span, clip_context, split_windows

log = logging.getLogger("guardrails_plugin")

T = TypeVar("T")


@dataclass
class ScoringStats:
    """Counters of one runner's fast/cascade work (the bench reads escalation rates from here)."""

    fast_verdicts: int = 0  #: windows fast-scored
    escalated: int = 0  #: of those, sent to full generation by the cascade
    unreadable: int = 0  #: fast scores that could not be read
    full_fallbacks: int = 0  #: windows sent to full generation because the engine cannot score

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.fast_verdicts if self.fast_verdicts else 0.0


@dataclass(frozen=True)
class Window:
    """One window of the judged text: its number (part of the session key), its span in the
    whole text and the request that judges only it."""

    index: int
    span: Span
    request: GuardRequest


@dataclass(frozen=True)
class _Job:
    """One guard model judging one request."""

    name: str
    model: GuardModel
    settings: GuardModelConfig
    engine: Engine
    stage: Stage
    stream: str | None
    windows: list[Window]

    def key(self, window: Window) -> SessionKey | None:
        return SessionKey(self.stream, self.name, window.index) if self.stream else None

    def failure(self, kind: FailureKind, why: str) -> NoVerdict:
        return NoVerdict(failure_verdict(self.name, self.stage, kind, why))


class NoVerdict(Exception):
    """This guard model gives no verdict; ``verdict`` is the failure verdict that says why."""

    def __init__(self, verdict: Verdict):
        super().__init__(verdict.parse_error)
        self.verdict = verdict


def failure_verdict(name: str, stage: Stage, kind: FailureKind, why: str) -> Verdict:
    return Verdict(
        guard=name, stage=stage, risk=1.0, parse_ok=kind is not FailureKind.UNPARSEABLE,
        parse_error=why, failure=kind,
    )


def engine_failure(name: str, stage: Stage, exc: BaseException, timeout_s: float) -> Verdict:
    """The failure verdict for an exception out of an engine call (or out of building the engine)."""
    if isinstance(exc, (asyncio.TimeoutError, GuardTimeoutError)):
        return failure_verdict(name, stage, FailureKind.TIMEOUT, f"deadline {timeout_s}s: {exc}")
    if isinstance(exc, GuardEngineError):
        return failure_verdict(name, stage, exc.kind, str(exc))
    if isinstance(exc, GuardConfigError):  # the engine could not be built (weights missing)
        return failure_verdict(name, stage, FailureKind.ENGINE_ERROR, f"not loaded: {exc}")
    if isinstance(exc, asyncio.CancelledError):
        # The engine cancelled something of its own and let it escape (the caller has checked
        # that it is not our own cancellation).
        return failure_verdict(name, stage, FailureKind.ENGINE_ERROR, "engine raised CancelledError")
    # Not one of ours: an engine bug. The fail-mode decision logs it once (explain.py); the
    # traceback is for debugging.
    log.debug("engine for %s raised", name, exc_info=exc)
    return failure_verdict(name, stage, FailureKind.ENGINE_ERROR, repr(exc))


def batch_error(results: Any, expected: int, what: str) -> str | None:
    """Why an engine's batch result is malformed (not a list of ``expected`` items), or None."""
    if isinstance(results, (list, tuple)) and len(results) == expected:
        return None
    n = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
    return f"engine returned {n} {what} for {expected} inputs"


def fit_context(request: GuardRequest, max_input_chars: int) -> GuardRequest:
    """``request`` with the query it carries as context clipped to a quarter of the guard's
    input budget (reasoning and response checks), so every window still fits the guard."""
    if request.stage is Stage.PROMPT:
        return request
    budget = max(1, max_input_chars // 4)
    if len(request.prompt) <= budget:
        return request
    return request.model_copy(update={"prompt": clip_context(request.prompt, budget)})


def in_band(risk: float, band: tuple[float, float]) -> bool:
    lo, hi = band
    return lo <= risk <= hi


def release_stream(engines: Iterable[Engine], stream: str) -> None:
    """Drop every KV cache the engines keep for ``stream`` (all guard models, all windows).
    Never raises: a stream's clean-up must not fail the caller."""
    for e in engines:
        try:
            for key in e.session_ids():
                if key.stream == stream:
                    e.release_session(key)
        except Exception:
            log.exception("releasing session %s on %s failed", stream, e.name)


class Runner:
    """Runs guard models for a Guard. The pool (loading.ModelPool) gives each configured guard
    model's adapter and engine; the facade is never asked."""

    def __init__(self, config: GuardConfig, pool: ModelPool):
        self.config = config
        self.pool = pool
        self.stats = ScoringStats()
        self.judged = JudgedWindows()
        self._warned: set[str] = set()

    async def run(self, name: str, request: GuardRequest) -> list[Verdict]:
        """Verdicts of guard model ``name`` on ``request``: one per window of the judged text, or
        one failure verdict. Raises only when the calling task itself is cancelled."""
        mc = self.config.models[name]
        try:
            engine = await self.pool.aengine(name)
        except Exception as exc:  # e.g. weights missing: the stage's fail mode, never an exception
            return [engine_failure(name, request.stage, exc, mc.timeout_s)]
        request = fit_context(request, mc.max_input_chars)
        text = request.target
        spans = split_windows(text, mc.max_input_chars, mc.window_overlap_chars)
        stream = request.metadata.get("session_id")
        job = _Job(
            name=name, model=self.pool.model(name), settings=mc, engine=engine, stage=request.stage,
            stream=str(stream) if stream else None,
            windows=[Window(i, (s, e), request.with_target(text[s:e])) for i, (s, e) in enumerate(spans)],
        )
        # a stream's closed windows (all but the last) judged by an earlier check keep their verdict
        closed = job.stream is not None and len(job.windows) > 1
        ctx = context_digest(request) if closed else b""
        known = self._recall(job, ctx, text) if closed else {}
        todo = [w for w in job.windows if w.index not in known]
        try:
            fresh = await (self._full(job, todo) if self.config.mode == "full" else self._scored(job, todo))
        except NoVerdict as no:
            return [no.verdict]
        if closed:
            self._remember(job, ctx, todo, fresh, text)
        known.update((w.index, v) for w, v in zip(todo, fresh, strict=True))
        return [known[w.index] for w in job.windows]

    async def judge_texts(self, name: str, request: GuardRequest, texts: Sequence[str]) -> list[Verdict]:
        """Verdicts of guard model ``name`` on each of ``texts`` judged alone with ``request``'s
        query, as one batch (redaction's localising checks): fast scoring where the family has it,
        else full generation. A failure gives one failure verdict per text."""
        mc = self.config.models[name]
        try:
            engine = await self.pool.aengine(name)
        except Exception as exc:
            return [engine_failure(name, request.stage, exc, mc.timeout_s)] * len(texts)
        model = self.pool.model(name)
        request = fit_context(request, mc.max_input_chars)
        job = _Job(name=name, model=model, settings=mc, engine=engine, stage=request.stage, stream=None,
                   windows=[Window(i, (0, len(t)), request.with_target(t)) for i, t in enumerate(texts)])
        fast = model.fast_scoring_problem(mc.engine) is None
        try:
            return await (self._scored(job, job.windows) if fast else self._full(job, job.windows))
        except NoVerdict as no:
            return [no.verdict] * len(texts)

    def forget(self, stream: str) -> None:
        """The stream is over: drop what its checks judged."""
        self.judged.forget(stream)

    # -- closed windows are judged once --------------------------------------------------------
    def _recall(self, job: _Job, ctx: bytes, text: str) -> dict[int, Verdict]:
        """Verdicts earlier checks of this stream gave the closed windows (every one but the last)."""
        assert job.stream is not None
        known = {}
        for w in job.windows[:-1]:
            v = self.judged.get(job.stream, job.name, w.index, w.span, ctx, text[w.span[0] : w.span[1]])
            if v is not None:
                known[w.index] = v
        return known

    def _remember(self, job: _Job, ctx: bytes, judged: Sequence[Window], verdicts: Sequence[Verdict], text: str) -> None:
        assert job.stream is not None
        last = job.windows[-1].index
        for w, v in zip(judged, verdicts, strict=True):
            if w.index == last:
                continue  # the open window: the next check sees it grown
            self.judged.put(job.stream, job.name, w.index, w.span, ctx, text[w.span[0] : w.span[1]], v)
            key = job.key(w)
            try:  # its final form is judged: its KV cache will not be reused
                if key is not None:
                    job.engine.release_session(key)
            except Exception:
                log.exception("releasing session %s on %s failed", key, job.engine.name)

    # -- engine calls ------------------------------------------------------------------------
    async def _within(self, job: _Job, call: Callable[[float], Awaitable[T]], deadline: float) -> T:
        """``call(seconds_left)`` under the deadline; every failure becomes NoVerdict. The
        caller's own cancellation propagates; ScoringUnsupported is the caller's to handle."""
        left = max(1e-3, deadline - asyncio.get_running_loop().time())
        try:
            return await asyncio.wait_for(call(left), left)
        except asyncio.CancelledError as exc:
            if we_are_cancelled():
                raise
            raise NoVerdict(engine_failure(job.name, job.stage, exc, job.settings.timeout_s)) from None
        except ScoringUnsupported:
            raise
        except Exception as exc:  # any engine bug is an engine failure, never an unhandled error
            raise NoVerdict(engine_failure(job.name, job.stage, exc, job.settings.timeout_s)) from None

    @staticmethod
    def _check_batch(job: _Job, results: Any, expected: int, what: str) -> None:
        bad = batch_error(results, expected, what)
        if bad:
            raise job.failure(FailureKind.ENGINE_ERROR, bad)

    # -- full generation ---------------------------------------------------------------------
    async def _full(self, job: _Job, windows: Sequence[Window]) -> list[Verdict]:
        try:
            inputs: list[GenerationRequest] = []
            for w in windows:
                inp = job.model.build_input(w.request)
                key = job.key(w)
                inputs.append(dataclasses.replace(inp, session_id=key) if key else inp)
        except Exception as exc:  # an adapter that cannot build an input must not crash the check
            log.exception("guard %s could not build its input", job.name)
            raise job.failure(FailureKind.BAD_INPUT, repr(exc)) from None
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + job.settings.timeout_s
        completions = await self._within(job, lambda left: job.engine.generate(inputs, timeout=left), deadline)
        latency_ms = (time.perf_counter() - start) * 1e3
        self._check_batch(job, completions, len(inputs), "completions")
        odd = next((type(c).__name__ for c in completions if not isinstance(c, str)), None)
        if odd is not None:
            raise job.failure(FailureKind.ENGINE_ERROR, f"engine returned a {odd} completion")
        verdicts = []
        for w, completion in zip(windows, completions, strict=True):
            try:
                v = job.model.parse(completion, job.stage)
            except Exception as exc:  # parsers never raise; if one does, it fails visibly
                log.exception("guard %s parser raised", job.name)
                v = job.model.unparseable(completion, job.stage, f"parser error: {exc!r}")
            verdicts.append(v.model_copy(update={"latency_ms": latency_ms, "window": w.span, "stage": job.stage}))
        return verdicts

    # -- fast scoring and the cascade --------------------------------------------------------
    def _specs(self, job: _Job, windows: Sequence[Window]) -> list[FastSpec]:
        try:
            specs = []
            for w in windows:
                spec = job.model.fast_spec(w.request)
                score = dataclasses.replace(spec.score, session_id=job.key(w), raw_prefix=spec.raw_prefix)
                specs.append(dataclasses.replace(spec, score=score))
            return specs
        except Exception as exc:
            log.exception("guard %s could not build its fast-score input", job.name)
            raise job.failure(FailureKind.BAD_INPUT, repr(exc)) from None

    async def _scored(self, job: _Job, windows: Sequence[Window]) -> list[Verdict]:
        specs = self._specs(job, windows)
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + job.settings.timeout_s
        try:
            pre_idx = [i for i, sp in enumerate(specs) if sp.pre is not None]
            pres = [sp.pre for sp in specs if sp.pre is not None]
            if pres:
                texts = await self._within(job, lambda left: job.engine.generate(pres, timeout=left), deadline)
                self._check_batch(job, texts, len(pres), "completions")
                for i, t in zip(pre_idx, texts, strict=True):
                    specs[i] = specs[i].with_pre_text(t)
            scores = [sp.score for sp in specs]
            results = await self._within(job, lambda left: job.engine.score(scores, timeout=left), deadline)
        except ScoringUnsupported as exc:
            # Never less checking than asked for: an engine that cannot score generates.
            self.stats.full_fallbacks += len(windows)
            if job.name not in self._warned:
                self._warned.add(job.name)
                log.warning("%s; guard %s runs full generation instead", exc, job.name)
            return await self._full(job, windows)
        latency_ms = (time.perf_counter() - start) * 1e3
        self._check_batch(job, results, len(specs), "scores")  # None, a bare result, a short batch

        verdicts: list[Verdict] = []
        for w, spec, res in zip(windows, specs, results, strict=True):
            try:
                v = to_verdict(job.model, spec.read(res), job.stage)
            except Exception as exc:  # reading never raises into the caller
                v = job.model.unparseable("", job.stage, f"fast score reader error: {exc!r}")
            self.stats.fast_verdicts += 1
            self.stats.unreadable += 0 if v.parse_ok else 1
            verdicts.append(v.model_copy(update={"latency_ms": latency_ms, "window": w.span, "stage": job.stage}))

        if self.config.mode != "cascade":
            return verdicts
        escalate = [i for i, v in enumerate(verdicts) if not v.ok or in_band(v.risk, self.config.cascade_band)]
        if not escalate:
            return verdicts
        self.stats.escalated += len(escalate)
        grey = [windows[i] for i in escalate]
        try:
            fulls = await self._full(job, grey)
        except NoVerdict as no:  # the full generation failed: each grey window fails with it
            fulls = [no.verdict] * len(grey)
        for i, w, full in zip(escalate, grey, fulls, strict=True):
            verdicts[i] = full.model_copy(update={"window": w.span, "latency_ms": full.latency_ms + verdicts[i].latency_ms})
        return verdicts


__all__ = [
    "NoVerdict",
    "Runner",
    "ScoringStats",
    "Window",
    "batch_error",
    "engine_failure",
    "failure_verdict",
    "fit_context",
    "in_band",
    "release_stream",
]
