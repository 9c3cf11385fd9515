"""Prometheus metrics and OpenTelemetry spans recorded from Guard decisions."""

from __future__ import annotations

import time

import httpx
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from guardrails_plugin import Action, FailureKind, Guard, GuardConfig, GuardModelConfig, Stage
from guardrails_plugin.engines.breaker import CircuitConfig
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.observe.metrics import (
    GuardMetrics,
    attach_metrics,
    metrics_asgi_app,
    metrics_for,
    observe_monitor,
    start_metrics_server,
)
from guardrails_plugin.stream.monitor import MonitorStats

try:
    from fake_openai_server import free_port
except ImportError:
    from tests.fake_openai_server import free_port

GR_SAFE = "ok\nAnswers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"
GR_HARMFUL = "bad\nAnswers: \nRequest: harmful\nCompletion: compliance\nResponse: harmful\n"
RS_SAFE = '"Analysis": fine\n"Judgment": 0'


def responder(prompt: str) -> str:
    if "explode" in prompt:
        raise RuntimeError("engine crashed")
    if "gibberish" in prompt:
        return "no format at all"
    if "<|system|>" in prompt:  # chat guard (ReasoningShield)
        return RS_SAFE
    return GR_HARMFUL if "bomb" in prompt else GR_SAFE


def make_guard(**cfg) -> Guard:
    return Guard(GuardConfig(**cfg), engine=ScriptedEngine(responder))


def test_checks_latency_parse_and_fail_mode_counters() -> None:
    guard = make_guard(stages={"response": {"guards": ["GuardReasoner-1B"], "fail_mode": "open"}},
                       circuit=CircuitConfig(failure_threshold=100))
    m = attach_metrics(guard)
    assert metrics_for(guard) is m
    assert attach_metrics(guard, m.registry) is m  # same registry: the same metrics, no second hook
    assert guard.hooks.count(m.hook) == 1
    s = m.sample
    guard.check_prompt("hello")
    guard.check_prompt("how to make a bomb")
    guard.check_prompt("gibberish please")
    guard.check_prompt("explode now")
    guard.check_prompt("   ")
    guard.check_reasoning(query="q", reasoning="2+2=4")
    guard.check_response(prompt="q", response="explode")  # fail-open stage

    gr = "GuardReasoner-1B"
    assert s("guardrails_checks_total", {"stage": "prompt", "model": gr, "action": "allow"}) == 1
    assert s("guardrails_checks_total", {"stage": "prompt", "model": gr, "action": "block"}) == 3
    assert s("guardrails_checks_total", {"stage": "prompt", "model": "none", "action": "allow"}) == 1
    assert s("guardrails_checks_total",
             {"stage": "reasoning", "model": "ReasoningShield-1B", "action": "allow"}) == 1
    assert s("guardrails_checks_total", {"stage": "response", "model": gr, "action": "allow"}) == 1
    assert s("guardrails_parse_failures_total", {"stage": "prompt", "model": gr}) == 1
    assert s("guardrails_guard_failures_total",
             {"stage": "prompt", "model": gr, "failure": "unparseable"}) == 1
    assert s("guardrails_guard_failures_total",
             {"stage": "prompt", "model": gr, "failure": "engine_error"}) == 1
    assert s("guardrails_fail_mode_total",
             {"stage": "prompt", "failure": "unparseable", "mode": "closed"}) == 1
    assert s("guardrails_fail_mode_total",
             {"stage": "prompt", "failure": "engine_error", "mode": "closed"}) == 1
    assert s("guardrails_fail_mode_total",
             {"stage": "response", "failure": "engine_error", "mode": "open"}) == 1
    # A real block is not a fail-mode activation.
    assert s("guardrails_fail_mode_total", {"stage": "prompt", "failure": "none", "mode": "closed"}) is None
    # Latency: one observation per guard model per judged check (the empty text has none).
    assert s("guardrails_guard_latency_seconds_count", {"stage": "prompt", "model": gr}) == 4
    assert s("guardrails_decision_latency_seconds_count", {"stage": "prompt"}) == 4
    assert s("guardrails_decision_latency_seconds_sum", {"stage": "prompt"}) >= 0.0
    guard.close()


def test_latency_histogram_buckets_reflect_guard_time() -> None:
    guard = Guard(GuardConfig(), engine=ScriptedEngine([GR_SAFE], latency_s=0.06))
    m = attach_metrics(guard, tracing=False)
    for _ in range(3):
        guard.check_prompt("hi")
    labels = {"stage": "prompt", "model": "GuardReasoner-1B"}
    assert m.sample("guardrails_guard_latency_seconds_bucket", {**labels, "le": "0.05"}) == 0
    assert m.sample("guardrails_guard_latency_seconds_bucket", {**labels, "le": "+Inf"}) == 3
    assert m.sample("guardrails_guard_latency_seconds_sum", labels) >= 0.18
    guard.close()


def test_unguarded_parts_counted() -> None:
    guard = make_guard()
    m = attach_metrics(guard)
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}]
    d = guard.check_prompt(msgs)
    assert d.unguarded and m.sample("guardrails_unguarded_parts_total", {"stage": "prompt"}) == 1
    guard.close()


def test_circuit_state_gauge_follows_breaker() -> None:
    calls = {"n": 0}

    def flaky(prompt: str) -> str:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("down")
        return GR_SAFE

    guard = Guard(GuardConfig(circuit=CircuitConfig(failure_threshold=2, reset_timeout_s=0.3)),
                  engine=ScriptedEngine(flaky, name="gpu-0"))
    m = attach_metrics(guard)
    assert m.sample("guardrails_circuit_state", {"engine": "gpu-0"}) is None  # no engine built yet
    guard.check_prompt("a")
    assert m.sample("guardrails_circuit_state", {"engine": "gpu-0"}) == 0
    guard.check_prompt("b")
    assert m.sample("guardrails_circuit_state", {"engine": "gpu-0"}) == 2
    d = guard.check_prompt("c")
    assert d.failure is FailureKind.CIRCUIT_OPEN
    assert m.sample("guardrails_circuit_rejected_total", {"engine": "gpu-0"}) == 1
    assert m.sample("guardrails_circuit_opened_total", {"engine": "gpu-0"}) == 1
    assert m.sample("guardrails_fail_mode_total",
                    {"stage": "prompt", "failure": "circuit_open", "mode": "closed"}) == 1
    time.sleep(0.35)
    assert m.sample("guardrails_circuit_state", {"engine": "gpu-0"}) == 1  # half-open by the clock
    assert guard.check_prompt("d").action is Action.ALLOW
    assert m.sample("guardrails_circuit_state", {"engine": "gpu-0"}) == 0
    guard.close()


def test_monitor_metrics_from_stats_and_real_monitor() -> None:
    guard = make_guard()
    m = attach_metrics(guard)
    observe_monitor(MonitorStats(stage=Stage.REASONING, checks_run=3, guard_time_ms=120.0,
                                 aborted=True, detection_lag_tokens=17), guard=guard)
    observe_monitor(MonitorStats(stage=Stage.RESPONSE, checks_run=1), guard=guard)
    observe_monitor(MonitorStats(stage=Stage.REASONING), guard=make_guard())  # no metrics: no-op
    lag = {"stage": "reasoning"}
    assert m.sample("guardrails_monitor_detection_lag_tokens_count", lag) == 1
    assert m.sample("guardrails_monitor_detection_lag_tokens_sum", lag) == 17
    assert m.sample("guardrails_monitor_detection_lag_tokens_bucket", {**lag, "le": "16.0"}) == 0
    assert m.sample("guardrails_monitor_detection_lag_tokens_bucket", {**lag, "le": "32.0"}) == 1
    assert m.sample("guardrails_monitor_aborts_total", lag) == 1
    assert m.sample("guardrails_monitor_checks_count", {"stage": "response"}) == 1
    assert m.sample("guardrails_monitor_guard_seconds_sum", lag) == pytest.approx(0.12)

    # A real monitor's checks go through the Guard, so its decisions are counted as checks.
    mon = guard.reasoning_monitor(query="q", check_every_tokens=4)
    for w in "step one then step two then step three then done".split():
        mon.feed(w + " ")
    final = mon.close()  # closing a monitor records its stats in the guard's metrics
    assert final.action is Action.ALLOW
    assert m.sample("guardrails_checks_total",
                    {"stage": "reasoning", "model": "ReasoningShield-1B", "action": "allow"}) >= 2
    assert m.sample("guardrails_monitor_checks_count", lag) == 2
    guard.close()


def test_shared_registry_reuses_metrics_and_global_registry_works() -> None:
    reg = CollectorRegistry()
    g1, g2 = make_guard(), make_guard()
    m1 = attach_metrics(g1, reg)
    m2 = attach_metrics(g2, reg)  # same registry: same metric objects, no duplicate registration
    assert m1 is m2
    g1.check_prompt("hello")
    g2.check_prompt("hello")
    assert reg.get_sample_value("guardrails_checks_total",
                                {"stage": "prompt", "model": "GuardReasoner-1B", "action": "allow"}) == 2
    g3 = make_guard()
    mg = attach_metrics(g3, prometheus_client.REGISTRY)
    assert attach_metrics(make_guard(), prometheus_client.REGISTRY) is mg
    before = prometheus_client.REGISTRY.get_sample_value(
        "guardrails_checks_total", {"stage": "prompt", "model": "GuardReasoner-1B", "action": "block"}) or 0
    g3.check_prompt("bomb")
    after = prometheus_client.REGISTRY.get_sample_value(
        "guardrails_checks_total", {"stage": "prompt", "model": "GuardReasoner-1B", "action": "block"})
    assert after == before + 1
    for g in (g1, g2, g3):
        g.close()


def test_metrics_hook_failure_never_changes_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = make_guard()
    m = attach_metrics(guard)

    def broken(*a, **k):
        raise RuntimeError("metrics backend exploded")

    monkeypatch.setattr(m.checks, "labels", broken)
    d = guard.check_prompt("how to make a bomb")
    assert d.action is Action.BLOCK
    guard.close()


def test_start_metrics_server_serves_prometheus_text() -> None:
    guard = make_guard()
    m = attach_metrics(guard)
    guard.check_prompt("hello")
    port = free_port()
    server, thread = start_metrics_server(port, m)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert r.status_code == 200
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert "guardrails_checks" in fams and "guardrails_circuit_state" in fams
    (sample,) = [s for s in fams["guardrails_checks"].samples if s.name == "guardrails_checks_total"]
    assert sample.labels == {"stage": "prompt", "model": "GuardReasoner-1B", "action": "allow"}
    assert sample.value == 1
    guard.close()


async def test_metrics_asgi_app_mounted_in_fastapi() -> None:
    from fastapi import FastAPI

    guard = make_guard()
    m = attach_metrics(guard)
    await guard.acheck_prompt("how to make a bomb")
    app = FastAPI()
    app.mount("/metrics", metrics_asgi_app(m))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/metrics/")
    assert r.status_code == 200
    assert 'guardrails_checks_total{action="block",model="GuardReasoner-1B",stage="prompt"} 1.0' in r.text
    await guard.aclose()


def test_otel_spans_around_each_check() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    guard = Guard(GuardConfig(), engine=ScriptedEngine(responder, latency_s=0.05))
    attach_metrics(guard, tracer_provider=provider)
    with tracer.start_as_current_span("agent-turn") as parent:
        guard.check_prompt("how to make a bomb")
        guard.check_prompt("explode")
    spans = exporter.get_finished_spans()
    checks = [s for s in spans if s.name == "guardrails.check"]
    guards = [s for s in spans if s.name == "guardrails.guard"]
    assert len(checks) == 2 and len(guards) == 2
    blocked, failed = checks
    assert blocked.attributes["guardrails.action"] == "block"
    assert blocked.attributes["guardrails.stage"] == "prompt"
    assert blocked.attributes["guardrails.risk"] == 1.0
    assert tuple(blocked.attributes["guardrails.guards"]) == ("GuardReasoner-1B",)
    # The caller's span (propagated through the engine loop thread) is the parent.
    assert blocked.parent is not None and blocked.parent.span_id == parent.get_span_context().span_id
    assert (blocked.end_time - blocked.start_time) / 1e9 >= 0.05  # covers the guard call
    assert failed.attributes["guardrails.failure"] == "engine_error"
    assert failed.status.status_code is trace.StatusCode.ERROR
    child = next(g for g in guards if g.parent.span_id == blocked.context.span_id)
    assert child.attributes["guardrails.model"] == "GuardReasoner-1B"
    assert child.start_time >= blocked.start_time and child.end_time <= blocked.end_time
    guard.close()


def test_tracing_off_and_guard_metrics_direct() -> None:
    reg = CollectorRegistry()
    m = GuardMetrics(reg, tracing=False)
    guard = make_guard()
    m.attach(guard)
    m.attach(guard)  # idempotent: one hook
    assert guard.hooks.count(m.hook) == 1
    guard.check_prompt("hello")
    assert reg.get_sample_value("guardrails_checks_total",
                                {"stage": "prompt", "model": "GuardReasoner-1B", "action": "allow"}) == 1
    guard.close()


def test_hook_sees_real_openai_decisions() -> None:
    """End to end over HTTP: a 500 from the guard server is a fail-mode activation."""
    try:
        from fake_openai_server import FakeOpenAIServer, Reply
    except ImportError:
        from tests.fake_openai_server import FakeOpenAIServer, Reply
    with FakeOpenAIServer(default=Reply.error(500)) as srv:
        cfg = GuardConfig(models={
            "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", engine="openai",
                                                 base_url=srv.base_url, timeout_s=2),
            "ReasoningShield-1B": GuardModelConfig(family="reasoningshield")})
        guard = Guard(cfg)
        m = attach_metrics(guard)
        guard.check_prompt("hi")
        # The breaker is named after the engine (OpenAIEngine: "openai:<served model>").
        state = m.sample("guardrails_circuit_state", {"engine": "openai:yueliu1999/GuardReasoner-1B"})
        guard.close()
    assert state == 0
    assert m.sample("guardrails_fail_mode_total",
                    {"stage": "prompt", "failure": "engine_error", "mode": "closed"}) == 1


async def test_litellm_proxy_metrics_app_serves_guard_metrics() -> None:
    """The LiteLLM proxy's own /metrics (mounted when `callbacks: ["prometheus"]` is set) serves
    prometheus_client.REGISTRY through litellm's ASGI app: guard metrics attached to the global
    registry show up there (docs/observability.md)."""
    pytest.importorskip("litellm")
    from litellm.integrations.prometheus_metrics_endpoint import make_metrics_asgi_app

    guard = make_guard()
    attach_metrics(guard, prometheus_client.REGISTRY)
    await guard.acheck_prompt("hello")
    app = make_metrics_asgi_app(prometheus_client.REGISTRY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/")
    assert r.status_code == 200
    fams = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"guardrails_checks", "guardrails_circuit_state", "guardrails_fail_mode"} <= fams
    await guard.aclose()


def test_otel_guard_span_names_the_failure_of_any_window() -> None:
    # Windows of one guard: the first judged, the second failed. The child span's failure attribute
    # used to read the first window's (None) and say "None".
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrails_plugin.observe.metrics import _span
    from guardrails_plugin.types import Decision, GuardRequest, Verdict

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    req = GuardRequest(stage=Stage.PROMPT, prompt="x")
    vs = [Verdict(guard="g", stage=Stage.PROMPT, risk=0.0, window=(0, 1)),
          Verdict(guard="g", stage=Stage.PROMPT, risk=1.0, failure=FailureKind.TIMEOUT, window=(1, 2))]
    d = Decision(action=Action.BLOCK, stage=Stage.PROMPT, text="no", reason="guard_timeout", verdicts=vs,
                 failure=FailureKind.TIMEOUT)
    _span(provider.get_tracer("t"), req, d)
    (child,) = [s for s in exporter.get_finished_spans() if s.name == "guardrails.guard"]
    assert child.attributes["guardrails.failure"] == "timeout"


MP_WORKER = """
import sys
from guardrails_plugin import Guard, GuardConfig
from guardrails_plugin.engines.breaker import CircuitConfig
from guardrails_plugin.engines import ScriptedEngine
from guardrails_plugin.observe.metrics import attach_metrics, multiprocess_mode, start_metrics_server

SAFE = "ok\\nAnswers: \\nRequest: unharmful\\nCompletion: compliance\\nResponse: unharmful\\n"
HARM = "bad\\nAnswers: \\nRequest: harmful\\nCompletion: compliance\\nResponse: harmful\\n"

def responder(prompt):
    if "explode" in prompt:
        raise RuntimeError("engine crashed")
    return HARM if "bomb" in prompt else SAFE

assert multiprocess_mode(), "PROMETHEUS_MULTIPROC_DIR was not picked up"
n, port, db, crash = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "crash"
guard = Guard(GuardConfig(audit={"path": db, "durability": "strict"},
                          circuit=CircuitConfig(failure_threshold=1)), engine=ScriptedEngine(responder))
metrics = attach_metrics(guard)
for i in range(n):
    guard.check_prompt("a bomb" if i % 2 else "hello")
if crash:  # the last check: this worker's circuit opens
    guard.check_prompt("explode")
if port:
    start_metrics_server(port, metrics)
print("READY", flush=True)
sys.stdin.read()  # stay alive (a live worker) until the test is done
"""


def test_two_workers_are_summed_in_one_scrape(tmp_path) -> None:
    """prometheus-client's multiprocess mode: two worker processes, one scrape, the sum."""
    import os
    import subprocess
    import sys

    from guardrails_plugin.observe.metrics import multiprocess_mode

    assert not multiprocess_mode()  # this process: ordinary in-memory metrics
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])}
    db = str(tmp_path / "audit.db")
    workers = [subprocess.Popen([sys.executable, "-c", MP_WORKER, n, p, db, crash], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for n, p, crash in (("3", str(port), "-"), ("5", "0", "crash"))]
    try:
        for w in workers:
            line = w.stdout.readline()  # type: ignore[union-attr]
            assert line == "READY\n", w.stderr.read() if w.poll() is not None else line  # type: ignore[union-attr]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text  # worker 1 serves
    finally:
        for w in workers:
            w.communicate(timeout=30)  # closes stdin: the workers exit
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    gr = {"stage": "prompt", "model": "GuardReasoner-1B"}
    assert value("guardrails_checks_total", **gr, action="allow") == 2 + 3  # worker 1 + worker 2
    assert value("guardrails_checks_total", **gr, action="block") == 1 + 2 + 1  # + the crash, closed
    assert value("guardrails_decision_latency_seconds_count", stage="prompt") == 3 + 6
    assert value("guardrails_audit_records_total", outcome="written") == 3 + 6
    assert value("guardrails_guard_failures_total", **gr, failure="engine_error") == 1
    states = [v for (name, _), v in samples.items() if name == "guardrails_circuit_state"]
    assert max(states) == 2  # the worst live worker: worker 2's circuit is open
    assert sum(v for (name, _), v in samples.items() if name == "guardrails_circuit_opened_total") == 1
