"""Guard: the facade. Stage -> guard models -> engine -> verdicts -> policy -> Decision.

Every check is async underneath and runs its engine work on the library's own loop thread
(runtime.py); the sync methods wait for it, the async ones await it from any event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import GuardConfig
from .content import normalize_text
from .engines import Engine
from .engines.breaker import CircuitBreaker
from .errors import GuardConfigError, GuardInputError
from .loading import ModelPool
from .models import GuardModel
from .observe import Auditor, AuditWriteError, auditor_from_config
from .observe.explain import explain_failure
from .policy import Policy
from .redaction import Redactor
from .runner import Runner, release_stream
from .runtime import LoopThread, default_loop
from .types import Action, Decision, GuardRequest, Stage

if TYPE_CHECKING:
    from .stream.monitor import ReasoningMonitor, StreamChecks

log = logging.getLogger("guardrails_plugin")

DecisionHook = Callable[[GuardRequest, Decision], None]

class Guard:
    """Checks prompts, reasoning traces and responses with local guard models.

    ``Guard(config, engine=...)``: ``engine`` overrides the configured engine of every guard model
    (a ScriptedEngine in tests, a shared OpenAIEngine, ...).
    """

    def __init__(self, config: GuardConfig | None = None, *, engine: Engine | None = None):
        self.config = config or GuardConfig()
        self.policy = Policy(self.config)
        #: the guard models' adapters and engines (loading.py), shared with the runner
        self.pool = ModelPool(self.config, engine=engine)
        self._runtime: LoopThread = default_loop()
        #: the per-model pipeline (windows, session keys, deadlines, failure verdicts; fast and
        #: cascade counters in ``runner.stats``)
        self.runner = Runner(self.config, self.pool)
        #: narrows a REDACT to spans (redaction/): detectors for data, the guard itself for the rest
        self.redactor = Redactor(self.config, self.runner.judge_texts)
        #: called with every Decision (audit, metrics); a hook that raises is logged, not fatal
        self.hooks: list[DecisionHook] = []
        for stage, sc in self.config.stages.items():
            for name in sc.guards if sc.enabled else ():
                model = self.model(name)  # fail fast on unknown families / bad model dirs
                if stage not in model.stages:
                    raise GuardConfigError(
                        f"guard model {name!r} ({model.family}) cannot judge the {stage} stage; "
                        f"it judges {sorted(str(s) for s in model.stages)}"
                    )
        #: the audit hook built from config.audit (audit.py); the Guard owns and closes it
        self.auditor: Auditor | None = None
        if self.config.audit:
            self.auditor = auditor_from_config(self, self.config.audit)
        #: webhook on escalations from config.notify (observe/webhooks.py): a hook that only enqueues
        self.notifier: Any = None
        if self.config.notify is not None:
            from .observe.webhooks import attach_notifier

            self.notifier = attach_notifier(self, self.config.notify)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, path: str | Path, *, engine: Engine | None = None, **overrides: Any) -> Guard:
        return cls(GuardConfig.from_yaml(path, **overrides), engine=engine)

    @classmethod
    def default(cls, *, engine: Engine | None = None) -> Guard:
        """GuardReasoner-1B on prompts and responses, ReasoningShield-1B on reasoning."""
        return cls(GuardConfig(), engine=engine)

    def model(self, name: str) -> GuardModel:
        """The adapter of the configured guard model ``name``."""
        return self.pool.model(name)

    def engine(self, name: str, *, download: bool = False) -> Engine:
        """The engine that runs guard model ``name`` (built on first use, shared when identical).

        Weights come from local files only (a folder, or the Hugging Face cache); ``download=True``
        (what ``warmup`` passes) may fetch a hub id missing from the cache, so a check never waits
        on the hub. With ``config.circuit.enabled`` (the default) it is a ``BreakerEngine``: ``generate`` goes
        through the engine's circuit breaker, everything else is delegated (``.inner`` is the
        engine itself)."""
        return self.pool.engine(name, download=download)

    def warmup(self, names: list[str] | None = None) -> Guard:
        """Resolve and load the guard models of every enabled stage (or just ``names``) now, at
        start-up: a hub id missing from the cache is downloaded here (never on a check's path,
        and not at all under HF_HUB_OFFLINE=1); a server (``engine: openai``) is asked whether it
        serves the model (``OpenAIEngine.check_ready``; a server that does not answer raises
        GuardEngineError). A model that cannot be had raises one GuardConfigError naming each such
        model, what was tried and how to fix it."""
        if names is None:
            names = [n for sc in self.config.stages.values() if sc.enabled for n in sc.guards]
        problems: list[str] = []
        for name in dict.fromkeys(names):
            try:
                engine = self.engine(name, download=True)
                probe = getattr(engine, "check_ready", None)  # a server engine: does it serve the model?
                if probe is not None:
                    self._runtime.run(probe())
            except GuardConfigError as exc:
                problems.append(str(exc))
            except ImportError as exc:
                problems.append(f"guard model {name!r} needs an optional dependency ({exc}); "
                                "install `pip install 'guardrails-plugin[transformers]'`")
        if not problems:  # span detectors too: Presidio imports spaCy, seconds a first REDACT must not wait
            self.redactor.warmup()
        if len(problems) == 1:
            raise GuardConfigError(problems[0])
        if problems:
            raise GuardConfigError("cannot load the guard models:\n- " + "\n- ".join(problems))
        return self

    def circuit_breakers(self) -> list[CircuitBreaker]:
        """The circuit breakers of the engines built so far (metrics read their state)."""
        return self.pool.circuit_breakers()

    # -- checks -------------------------------------------------------------------------------
    def check(self, request: GuardRequest) -> Decision:
        return self._runtime.run(self._acheck(request))

    async def acheck(self, request: GuardRequest) -> Decision:
        # Engines are loop-agnostic (thread-safe queues, one HTTP pool per loop), so an async
        # caller runs the check on its own loop: no thread hop, no GIL hand-off per check.
        return await self._acheck(request)

    def check_prompt(self, text: Any, **kw: Any) -> Decision:
        return self.check(self.request(Stage.PROMPT, prompt=text, **kw))

    async def acheck_prompt(self, text: Any, **kw: Any) -> Decision:
        return await self.acheck(self.request(Stage.PROMPT, prompt=text, **kw))

    def check_reasoning(self, query: Any = "", reasoning: Any = "", **kw: Any) -> Decision:
        return self.check(self.request(Stage.REASONING, prompt=query, reasoning=reasoning, **kw))

    async def acheck_reasoning(self, query: Any = "", reasoning: Any = "", **kw: Any) -> Decision:
        return await self.acheck(self.request(Stage.REASONING, prompt=query, reasoning=reasoning, **kw))

    def check_response(self, prompt: Any = "", response: Any = "", **kw: Any) -> Decision:
        return self.check(self.request(Stage.RESPONSE, prompt=prompt, response=response, **kw))

    async def acheck_response(self, prompt: Any = "", response: Any = "", **kw: Any) -> Decision:
        return await self.acheck(self.request(Stage.RESPONSE, prompt=prompt, response=response, **kw))

    def request(
        self,
        stage: Stage,
        *,
        prompt: Any = "",
        reasoning: Any = None,
        response: Any = None,
        request_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> GuardRequest:
        """A GuardRequest from raw caller content (str, bytes, message lists), normalised.

        Raises GuardInputError for content of a type no guard can judge."""
        notes: list[str] = []
        fields: dict[str, Any] = {}
        judged = {Stage.PROMPT: "prompt", Stage.REASONING: "reasoning", Stage.RESPONSE: "response"}
        for key, value in (("prompt", prompt), ("reasoning", reasoning), ("response", response)):
            if value is None:
                if key == judged[Stage(stage)]:  # a check of nothing is a caller bug, not an ALLOW
                    raise GuardInputError(f"{key} to check is None")
                continue
            t = normalize_text(value, what=key)
            fields[key] = t.value
            notes.extend(t.notes)
        meta = dict(metadata or {})
        if notes:
            meta["input_notes"] = notes
        extra = {"request_id": request_id} if request_id else {}
        return GuardRequest(stage=stage, metadata=meta, **fields, **extra)

    def reasoning_monitor(self, query: str = "", **kw: Any) -> ReasoningMonitor:
        """A monitor fed with a streaming chain of thought (see stream/monitor.py)."""
        return self.stream_monitor(kw.pop("stage", Stage.REASONING), query, **kw)

    def stream_monitor(self, stage: Stage | str, query: str = "", **kw: Any) -> ReasoningMonitor:
        """A monitor for any streamed stage (the answer: ``Stage.RESPONSE``, held back by default)."""
        from .stream.monitor import ReasoningMonitor

        return ReasoningMonitor(self.stream_checks(), query, stage=stage, **kw)

    def stream_checks(self) -> StreamChecks:
        """What monitors and turn guards need from this Guard, handed to them (the stream layer
        never imports the facade): the check, config, policy, engine loop, session release and
        the metrics sink for finished streams."""
        from .observe.metrics import observe_monitor
        from .stream.monitor import StreamChecks

        return StreamChecks(check=self.acheck, config=self.config, policy=self.policy, runtime=self._runtime,
                            release_session=self.release_session, observe=lambda s: observe_monitor(s, guard=self),
                            hold_chars=self.redactor.hold_chars)

    # -- internals ----------------------------------------------------------------------------
    async def _acheck(self, request: GuardRequest) -> Decision:
        start = time.perf_counter()
        stage_cfg = self.config.stage(request.stage)
        notes = list(request.metadata.get("input_notes", []))
        unguarded = [n for n in notes if "not guarded" in n]
        if not stage_cfg.enabled:
            decision = Decision(
                action=Action.ALLOW,
                stage=request.stage,
                text=request.target,
                reason="stage_disabled",
                request_id=request.request_id,
                unguarded=unguarded,
            )
        elif not request.target.strip():
            decision = self.policy.empty(request, unguarded=unguarded)
        else:
            results = await asyncio.gather(*(self.runner.run(name, request) for name in stage_cfg.guards))
            verdicts = [v for vs in results for v in vs]
            decision = self.policy.decide(
                request,
                verdicts,
                latency_ms=(time.perf_counter() - start) * 1e3,
                unguarded=unguarded,
            )
            decision = await self.redactor.refine(request, decision)
            if decision.failure is not None:
                decision = self._explain_failure(request, decision)
        if notes:  # what normalising the input changed or skipped, visible on the decision
            decision = decision.model_copy(update={"notes": notes})
        await self._emit(request, decision)
        return decision

    def _explain_failure(self, request: GuardRequest, decision: Decision) -> Decision:
        """Log the errors behind a fail-mode decision once, in full (explain.py), and return the
        decision with URLs cut from what callers and clients see."""
        line, shown = explain_failure(decision, self.config.fail_mode_for(request.stage), self.pool.describe)
        log.warning("%s", line)
        return shown

    async def _emit(self, request: GuardRequest, decision: Decision) -> None:
        for hook in list(self.hooks):
            try:
                if getattr(hook, "blocking", False):
                    # e.g. a strict audit write (fsync): off the caller's event loop
                    await asyncio.to_thread(hook, request, decision)
                else:
                    hook(request, decision)
            except AuditWriteError:  # strict audit: a Decision not on record must not be returned
                raise
            except Exception:  # observers must never change or break a decision
                log.exception("decision hook %r failed", hook)

    def release_session(self, session_id: str) -> None:
        """Drop the engines' KV caches kept for the stream ``session_id`` (a monitor closed), for
        every guard model and window. Never raises."""
        release_stream(self.pool.built(), session_id)
        self.runner.forget(session_id)

    # -- lifecycle ----------------------------------------------------------------------------
    async def _aclose(self) -> None:
        await self.pool.aclose()

    def _close_sinks(self) -> None:
        if self.auditor is not None:
            self.auditor.close()  # drains queued audit records
        if self.notifier is not None:
            self.notifier.close()  # sends what is queued, then stops its worker

    def close(self) -> None:
        self._runtime.run(self._aclose())
        self._close_sinks()

    async def aclose(self) -> None:
        await self._runtime.arun(self._aclose())
        await asyncio.to_thread(self._close_sinks)

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Guard:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

