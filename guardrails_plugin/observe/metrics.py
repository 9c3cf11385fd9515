"""Prometheus metrics and optional OpenTelemetry spans for a Guard.

    from guardrails_plugin.observe.metrics import attach_metrics, start_metrics_server
    m = attach_metrics(guard)              # own CollectorRegistry; registry=prometheus_client.REGISTRY for the global one
    start_metrics_server(9464, m)          # or: app.mount("/metrics", m.asgi_app())

Everything is recorded from a decision hook (``guard.hooks``), so no check pays more than a few
counter increments, and a metrics failure can never change a decision (the Guard logs and ignores
hook errors). Circuit-breaker state is read at scrape time from the guards' breakers.

Metric names (all prefixed ``guardrails_``; see docs/observability.md):

* ``checks_total{stage,model,action}``: one per (decision, guard model that judged it); ``model="none"``
  when nothing was judged (empty text, stage disabled).
* ``decision_latency_seconds{stage}``: whole check; ``guard_latency_seconds{stage,model}``: one guard model.
* ``parse_failures_total{stage,model}``: completions not in the guard's format.
* ``guard_failures_total{stage,model,failure}``: verdicts without a judgement, by FailureKind.
* ``fail_mode_total{stage,failure,mode}``: decisions taken by the fail mode (mode closed|open).
* ``circuit_state{engine}`` (0 closed, 1 half-open, 2 open), ``circuit_opened_total{engine}``,
  ``circuit_rejected_total{engine}``.
* ``monitor_detection_lag_tokens{stage}``, ``monitor_checks`` and ``monitor_guard_seconds``: from
  ``observe_monitor(stats)``, which the reasoning monitor calls when a stream closes.
* ``audit_records_total{outcome}`` (written | dropped | failed) and ``audit_retries_total``: from the
  guard's Auditor (observe/auditor.py); ``dropped`` counts records lost to a full queue or a closed
  auditor, ``retries`` batch writes retried while the store was unreachable.

Several worker processes (gunicorn, ``litellm --num_workers``): with ``PROMETHEUS_MULTIPROC_DIR``
set before prometheus-client is imported, every metric above lives in that directory's files, and
``start_metrics_server`` / ``metrics_asgi_app`` serve the sum over all workers (prometheus-client's
multiprocess mode). Circuit metrics are then kept in real gauges/counters updated with each
decision (the worst state over the live workers), since a scrape-time collector sees one process.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..engines.breaker import STATE_CODES
from ..types import Action, Decision, GuardRequest, Stage


class Observed(Protocol):
    """What metrics read of a Guard: its decision hooks and circuit breakers. The Guard is passed
    in; the facade is never imported here (dependencies point down)."""

    hooks: list[Any]

    def circuit_breakers(self) -> list[Any]: ...

log = logging.getLogger("guardrails_plugin.observe.metrics")

#: guard calls take ~10 ms (fast scoring on a GPU) to tens of seconds (8B reasoning on CPU)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: tokens streamed past the first harmful token before the monitor stopped the stream
LAG_BUCKETS = (0, 1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CHECK_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


def multiprocess_mode() -> bool:
    """True when prometheus-client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` (the variable was
    set before prometheus-client was first imported in this process)."""
    return values.ValueClass is not values.MutexValue


class _CircuitCollector(Collector):
    """Reads breaker states at scrape time (an open circuit turns half-open by the clock alone)."""

    def __init__(self, owner: GuardMetrics):
        self._owner = weakref.ref(owner)

    def collect(self) -> Iterable[Any]:
        state = GaugeMetricFamily(
            "guardrails_circuit_state",
            "Circuit breaker state per engine: 0 closed, 1 half-open, 2 open.",
            labels=["engine"],
        )
        opened = CounterMetricFamily(
            "guardrails_circuit_opened", "Times an engine's circuit opened.", labels=["engine"]
        )
        rejected = CounterMetricFamily(
            "guardrails_circuit_rejected",
            "Calls failed fast by an open circuit.",
            labels=["engine"],
        )
        owner = self._owner()
        seen: set[str] = set()
        for br in owner.breakers() if owner else []:
            name = br.name
            if name in seen:  # two guards may name engines alike; the first wins
                continue
            seen.add(name)
            state.add_metric([name], STATE_CODES[br.state])
            opened.add_metric([name], br.stats["opened"])
            rejected.add_metric([name], br.stats["rejected"])
        yield state
        yield opened
        yield rejected

    def describe(self) -> Iterable[Any]:
        # Registering must not call collect() (no guards yet); names are declared here instead.
        return [
            GaugeMetricFamily("guardrails_circuit_state", "", labels=["engine"]),
            CounterMetricFamily("guardrails_circuit_opened", "", labels=["engine"]),
            CounterMetricFamily("guardrails_circuit_rejected", "", labels=["engine"]),
        ]


class GuardMetrics:
    """The metric objects of one registry, and the decision hook that feeds them."""

    def __init__(self, registry: CollectorRegistry | None = None, *, tracer_provider: Any = None,
                 tracing: bool | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.checks = Counter(
            "guardrails_checks", "Guard checks by stage, guard model and action.",
            ["stage", "model", "action"], registry=r,
        )
        self.decision_latency = Histogram(
            "guardrails_decision_latency_seconds", "Latency of a whole check (all guards).",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.guard_latency = Histogram(
            "guardrails_guard_latency_seconds", "Latency of one guard model's call.",
            ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.parse_failures = Counter(
            "guardrails_parse_failures", "Guard completions that did not follow the guard's format.",
            ["stage", "model"], registry=r,
        )
        self.guard_failures = Counter(
            "guardrails_guard_failures", "Guard calls that gave no judgement, by failure kind.",
            ["stage", "model", "failure"], registry=r,
        )
        self.fail_mode = Counter(
            "guardrails_fail_mode", "Decisions taken by the fail mode (no usable verdict).",
            ["stage", "failure", "mode"], registry=r,
        )
        self.unguarded = Counter(
            "guardrails_unguarded_parts", "Input parts not guarded (images, tool calls, ...).",
            ["stage"], registry=r,
        )
        self.monitor_lag = Histogram(
            "guardrails_monitor_detection_lag_tokens",
            "Tokens streamed past the harmful point before the monitor stopped the stream.",
            ["stage"], buckets=LAG_BUCKETS, registry=r,
        )
        self.monitor_checks = Histogram(
            "guardrails_monitor_checks", "Guard checks run per monitored stream.",
            ["stage"], buckets=CHECK_BUCKETS, registry=r,
        )
        self.monitor_guard_time = Histogram(
            "guardrails_monitor_guard_seconds", "Guard time spent per monitored stream.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.monitor_aborts = Counter(
            "guardrails_monitor_aborts", "Monitored streams stopped by a decision.", ["stage"],
            registry=r,
        )
        self.audit_records = Counter(
            "guardrails_audit_records", "Audit records by outcome: written, dropped (queue full or "
            "auditor closed), failed (rejected by the store).", ["outcome"], registry=r,
        )
        self.audit_retries = Counter(
            "guardrails_audit_retries", "Audit batch writes retried while the store was unreachable.",
            registry=r,
        )
        self._guards: weakref.WeakSet[Observed] = weakref.WeakSet()
        self._auditors: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._circuit_seen: dict[str, tuple[int, int]] = {}
        self._mp_circuit: tuple[Gauge, Counter, Counter] | None = None
        if multiprocess_mode():
            # a scrape-time collector would report only the scraped process: keep real metrics
            self._mp_circuit = (
                Gauge("guardrails_circuit_state", "Circuit breaker state per engine: 0 closed, "
                      "1 half-open, 2 open (worst over live workers).", ["engine"],
                      multiprocess_mode="livemax", registry=r),
                Counter("guardrails_circuit_opened", "Times an engine's circuit opened.", ["engine"], registry=r),
                Counter("guardrails_circuit_rejected", "Calls failed fast by an open circuit.", ["engine"],
                        registry=r),
            )
        else:
            r.register(_CircuitCollector(self))
        with _registry_lock:
            _by_registry.setdefault(r, self)  # attach_metrics(guard, r) finds these metrics
        self._tracer = _make_tracer(tracer_provider) if tracing is not False else None
        if tracing is True and self._tracer is None:
            log.warning("tracing requested but opentelemetry is not importable")

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, guard: Observed) -> GuardMetrics:
        """Record ``guard``'s decisions (idempotent)."""
        with self._lock:
            if guard in self._guards:
                return self
            self._guards.add(guard)
        guard.hooks.append(self.hook)
        _by_guard[guard] = self
        for hook in list(guard.hooks):  # the guard's auditors (duck-typed: metrics imports no audit code)
            if isinstance(getattr(hook, "listeners", None), list) and hasattr(hook, "durability"):
                self.watch_auditor(hook)
        return self

    def watch_auditor(self, auditor: Any) -> None:
        """Count ``auditor``'s written / dropped / failed records and retries (idempotent)."""
        with self._lock:
            if auditor in self._auditors:
                return
            self._auditors.add(auditor)
        auditor.listeners.append(self._audit_event)

    def _audit_event(self, auditor: Any, event: str, n: int) -> None:
        if event == "retried":
            self.audit_retries.inc(n)
        elif event in ("written", "dropped", "failed"):
            self.audit_records.labels(event).inc(n)

    def breakers(self) -> list[Any]:
        out = []
        for g in list(self._guards):
            try:
                out.extend(g.circuit_breakers())
            except Exception:  # a closed or half-built guard has nothing to report
                continue
        return out

    # -- the decision hook -------------------------------------------------------------------------
    def hook(self, request: GuardRequest, decision: Decision) -> None:
        stage = str(decision.stage)
        action = str(decision.action)
        per_model: dict[str, list[Any]] = {}
        for v in decision.verdicts:
            per_model.setdefault(v.guard, []).append(v)
        for model in per_model or ["none"]:
            self.checks.labels(stage, model, action).inc()
        for model, vs in per_model.items():
            # Windows of one text share one engine call, so one latency per model per decision.
            self.guard_latency.labels(stage, model).observe(max(v.latency_ms for v in vs) / 1e3)
            for v in vs:
                if v.failure is not None:
                    self.guard_failures.labels(stage, model, str(v.failure)).inc()
                if not v.parse_ok:
                    self.parse_failures.labels(stage, model).inc()
        if decision.verdicts:
            self.decision_latency.labels(stage).observe(decision.latency_ms / 1e3)
        if decision.failure is not None:  # the policy sets it only when the fail mode decided
            mode = "open" if decision.degraded or decision.action is Action.ALLOW else "closed"
            self.fail_mode.labels(stage, str(decision.failure), mode).inc()
        if decision.unguarded:
            self.unguarded.labels(stage).inc(len(decision.unguarded))
        if self._mp_circuit is not None:
            self._sync_circuits()
        if self._tracer is not None:
            _span(self._tracer, request, decision)

    def _sync_circuits(self) -> None:
        """Multiprocess mode: copy breaker states and counts into this worker's metric files."""
        state, opened, rejected = self._mp_circuit  # type: ignore[misc]
        for br in self.breakers():
            name, st = br.name, br.stats
            state.labels(name).set(STATE_CODES[br.state])
            with self._lock:
                o0, r0 = self._circuit_seen.get(name, (0, 0))
                self._circuit_seen[name] = (st["opened"], st["rejected"])
            if st["opened"] > o0:
                opened.labels(name).inc(st["opened"] - o0)
            if st["rejected"] > r0:
                rejected.labels(name).inc(st["rejected"] - r0)

    # -- monitor ---------------------------------------------------------------------------------
    def observe_monitor(self, stats: Any, stage: Stage | str | None = None,
                        aborted: bool | None = None) -> None:
        """Record one monitored stream's ``MonitorStats`` (duck-typed: ``detection_lag_tokens``,
        ``checks_run``, ``guard_time_ms``; ``stage`` and ``aborted`` read from it when not given)."""
        st = str(stage or getattr(stats, "stage", None) or Stage.REASONING)
        lag = getattr(stats, "detection_lag_tokens", None)
        if lag is not None:
            self.monitor_lag.labels(st).observe(float(lag))
        checks = getattr(stats, "checks_run", None)
        if checks is not None:
            self.monitor_checks.labels(st).observe(float(checks))
        guard_ms = getattr(stats, "guard_time_ms", None)
        if guard_ms is not None:
            self.monitor_guard_time.labels(st).observe(float(guard_ms) / 1e3)
        if aborted is None:
            aborted = bool(getattr(stats, "aborted", False))
        if aborted:
            self.monitor_aborts.labels(st).inc()

    # -- exposition ------------------------------------------------------------------------------
    def start_server(self, port: int, addr: str = "127.0.0.1") -> Any:
        return start_metrics_server(port, self, addr=addr)

    def asgi_app(self) -> Any:
        return metrics_asgi_app(self)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's value (tests, health checks)."""
        return self.registry.get_sample_value(name, labels or {})


# One GuardMetrics per registry: metric names may be registered only once per registry.
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, GuardMetrics] = weakref.WeakKeyDictionary()
_by_guard: weakref.WeakKeyDictionary[Any, GuardMetrics] = weakref.WeakKeyDictionary()
_registry_lock = threading.RLock()


def attach_metrics(guard: Observed, registry: CollectorRegistry | None = None, *,
                   tracer_provider: Any = None, tracing: bool | None = None) -> GuardMetrics:
    """Record ``guard``'s decisions in Prometheus metrics (and OpenTelemetry spans when
    ``opentelemetry`` is importable; ``tracing=False`` turns spans off).

    ``registry=None`` gives a fresh ``CollectorRegistry`` (serve it with ``start_metrics_server(port,
    metrics)``); pass ``prometheus_client.REGISTRY`` to add to the global one that default exporters
    (and the LiteLLM proxy's ``/metrics``) serve. Several guards may share a registry."""
    if registry is None:
        return GuardMetrics(tracer_provider=tracer_provider, tracing=tracing).attach(guard)
    with _registry_lock:
        m = _by_registry.get(registry)
        if m is None:
            m = GuardMetrics(registry, tracer_provider=tracer_provider, tracing=tracing)
            _by_registry[registry] = m
    return m.attach(guard)


def metrics_for(guard: object) -> GuardMetrics | None:
    """The GuardMetrics attached to ``guard``, if any."""
    return _by_guard.get(guard)


def observe_monitor(stats: Any, *, guard: Observed | None = None, stage: Stage | str | None = None,
                    aborted: bool | None = None) -> None:
    """Record a finished monitored stream in the metrics attached to ``guard`` (no-op when none
    are). Called by ReasoningMonitor on close; never raises."""
    try:
        m = _by_guard.get(guard) if guard is not None else None
        if m is not None:
            m.observe_monitor(stats, stage=stage, aborted=aborted)
    except Exception:
        log.exception("observe_monitor failed")


def _registry_of(target: GuardMetrics | CollectorRegistry | None) -> CollectorRegistry:
    if multiprocess_mode():
        # the values of every worker are in PROMETHEUS_MULTIPROC_DIR: serve their sum
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    if isinstance(target, GuardMetrics):
        return target.registry
    return target if target is not None else REGISTRY


def start_metrics_server(port: int, metrics: GuardMetrics | CollectorRegistry | None = None, *,
                         addr: str = "127.0.0.1") -> Any:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (``metrics=None``: the global
    registry; in multiprocess mode, the sum over every worker's files). Returns prometheus-client's
    ``(server, thread)``; ``server.shutdown()`` stops it."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=addr, registry=_registry_of(metrics))


def metrics_asgi_app(metrics: GuardMetrics | CollectorRegistry | None = None) -> Any:
    """An ASGI app serving the registry in Prometheus' text format (mount it at ``/metrics``)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(registry=_registry_of(metrics))


# -- OpenTelemetry (optional) -----------------------------------------------------------------------
def _make_tracer(provider: Any) -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if provider is not None:
        return provider.get_tracer("guardrails_plugin")
    return trace.get_tracer("guardrails_plugin")


def _span(tracer: Any, request: GuardRequest, decision: Decision) -> None:
    """A ``guardrails.check`` span covering the check (started ``latency_ms`` ago, so it spans the
    guard call), with one ``guardrails.guard`` child per guard model. The hook runs in the check's
    context, so the caller's current span (propagated through the loop thread) is the parent."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
    except ImportError:  # pragma: no cover
        return
    end = time.time_ns()
    start = end - int(decision.latency_ms * 1e6)
    attrs = {
        "guardrails.stage": str(decision.stage),
        "guardrails.action": str(decision.action),
        "guardrails.reason": decision.reason[:500],
        "guardrails.risk": float(decision.risk),
        "guardrails.degraded": bool(decision.degraded),
        "guardrails.request_id": decision.request_id or request.request_id,
        "guardrails.guards": sorted({v.guard for v in decision.verdicts}),
        "guardrails.windows": len(decision.verdicts),
    }
    if decision.failure is not None:
        attrs["guardrails.failure"] = str(decision.failure)
    if decision.categories:
        attrs["guardrails.categories"] = list(decision.categories)
    span = tracer.start_span("guardrails.check", start_time=start, attributes=attrs)
    if decision.failure is not None:
        span.set_status(Status(StatusCode.ERROR, str(decision.failure)))
    ctx = trace.set_span_in_context(span)
    per_model: dict[str, list[Any]] = {}
    for v in decision.verdicts:
        per_model.setdefault(v.guard, []).append(v)
    for model, vs in per_model.items():
        lat = max(v.latency_ms for v in vs)
        child = tracer.start_span(
            "guardrails.guard", context=ctx, start_time=start,
            attributes={
                "guardrails.model": model,
                "guardrails.risk": max(v.risk for v in vs),
                "guardrails.parse_ok": all(v.parse_ok for v in vs),
                "guardrails.windows": len(vs),
                **({"guardrails.failure": str(next(v.failure for v in vs if v.failure))}
                   if any(v.failure for v in vs) else {}),
            },
        )
        if any(not v.ok for v in vs):
            child.set_status(Status(StatusCode.ERROR, next(str(v.failure) for v in vs if not v.ok)))
        child.end(end_time=min(end, start + int(lat * 1e6)))
    span.end(end_time=end)


__all__ = [
    "GuardMetrics",
    "attach_metrics",
    "metrics_asgi_app",
    "metrics_for",
    "multiprocess_mode",
    "observe_monitor",
    "start_metrics_server",
]
