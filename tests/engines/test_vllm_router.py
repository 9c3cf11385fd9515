"""Scale-out on the real ``vllm-router`` binary (Rust, CPU): three loopback guard replicas behind it,
concurrent monitor streams through Guard -> OpenAIEngine -> router (tests/router_support.py).

* Every check of one stream carries the stream's session key (``x-session-id``); the router's
  consistent_hash keeps all of a stream's checks on one replica while the streams spread over all
  three. One replica is a real ``transformers serve`` (tiny scripted Llama) where installed.
* A replica SIGKILLed mid-load costs no verdict: the router's retries carry every check (the engine
  is given no retries of its own, so nothing else could), and the restarted replica gets traffic
  again.
* The engine's retries do not multiply the router's.

``benchmarks/router_bench.py`` prints the same runs as a table (requests per replica,
stickiness, errors during kill/recover).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails_plugin import Action, Guard, GuardConfig
from guardrails_plugin.engines.openai_engine import OpenAIEngine
from guardrails_plugin.errors import GuardEngineError

try:
    import router_support as rs
    from fake_openai_server import FakeOpenAIServer, Reply
except ImportError:  # tests/ as a package
    from tests import router_support as rs
    from tests.fake_openai_server import FakeOpenAIServer, Reply

if rs.router_executable() is None:  # in the dev extras: CI must run this, never skip it
    if os.environ.get("CI"):
        raise RuntimeError("vllm-router is not installed (dev extras)")
    pytest.skip("vllm-router not installed (pip install vllm-router)", allow_module_level=True)


def config(url: str) -> GuardConfig:
    return GuardConfig.build(
        models={rs.GUARD: {"family": "reasoningshield", "engine": "openai", "base_url": url,
                           "served_model_name": rs.GUARD, "max_new_tokens": 16, "timeout_s": 20}},
        stages={"prompt": {"enabled": False}, "response": {"enabled": False},
                "reasoning": {"guards": [rs.GUARD]}},
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rs.Cluster]:
    c = rs.start_cluster(tmp_path_factory.mktemp("router"))
    try:
        yield c
    finally:
        c.stop()


def test_each_stream_sticks_to_one_replica_and_streams_spread(cluster: rs.Cluster) -> None:
    with Guard(config(cluster.router_url)) as guard:  # the configured engine: session header on
        streams = asyncio.run(rs.run_streams(guard, 24))
    assert not [s.error for s in streams if s.error], [s.error for s in streams if s.error]
    for s in streams:
        assert s.checks >= 2  # checks that fall due while one runs coalesce
        for d in [*s.decisions, s.final]:
            assert d.action is Action.ALLOW and d.failure is None, d
            assert all(v.parse_ok for v in d.verdicts)  # a real parsed verdict from every replica
    table = cluster.per_session(streams)
    for s in streams:
        counts = table[s.session]
        assert sum(counts.values()) == s.checks, (s.session, counts, s.checks)
        assert len(counts) == 1, f"stream {s.session} was split over replicas: {counts}"
    mains = {rs.main_replica(c) for c in table.values()}
    assert mains == {r.name for r in cluster.replicas}, f"streams did not spread over all three: {mains}"


def test_single_checks_spread_over_the_replicas(cluster: rs.Cluster) -> None:
    """A check outside any stream carries a random key of its own: without one, vllm-router's
    consistent_hash sends every key-less chat request to the same replica."""
    start = time.time()
    with Guard(config(cluster.router_url)) as guard:
        for i in range(30):
            d = guard.check_reasoning(query=f"q{i}", reasoning=f"a single check {i}")
            assert d.action is Action.ALLOW and d.failure is None
    per = {r.name: sum(1 for rec in cluster.fake_log(r) if rec["at"] >= start) for r in cluster.replicas}
    assert sum(per.values()) == 30 and all(per.values()), per


def test_kill_a_replica_mid_load_then_bring_it_back(cluster: rs.Cluster) -> None:
    victim = cluster.replicas[0]
    assert victim.kind == "fake"
    # No engine retries: whatever is carried past the dead replica is carried by the router.
    engine = OpenAIEngine(cluster.router_url, model=rs.GUARD, max_retries=0, timeout_s=20)
    guard = Guard(config(cluster.router_url), engine=engine)
    events: dict[str, float] = {}

    async def chaos() -> None:
        await asyncio.sleep(0.8)
        cluster.kill(victim)
        events["killed"] = time.time()
        await asyncio.sleep(1.0)
        cluster.start_fake(victim)
        events["restarted"] = time.time()

    async def run() -> list[rs.StreamResult]:
        streams, _ = await asyncio.gather(rs.run_streams(guard, 24, tokens=480, offset=100), chaos())
        return streams

    try:
        start = time.time()
        streams = asyncio.run(run())
        assert not [s.error for s in streams if s.error]
        # No verdict lost: every check of every stream came back as a real verdict (the fail mode,
        # which would BLOCK, was never needed).
        failed = [d for s in streams for d in s.failed]
        assert failed == [], [d.detail for d in failed]
        assert all(s.final is not None and s.final.action is Action.ALLOW for s in streams)
        table = cluster.per_session(streams, since=start)
        moved = [sid for sid, c in table.items() if victim.name in c and len(c) > 1]
        assert moved, f"no stream of the killed replica was carried elsewhere: {table}"

        # Back: the restarted replica gets traffic again (its circuit closes after 1 s).
        deadline = time.monotonic() + 20
        seen = 0
        while time.monotonic() < deadline and not seen:
            asyncio.run(rs.run_streams(guard, 6, tokens=96, offset=1000 + int(time.monotonic())))
            seen = sum(1 for r in cluster.fake_log(victim) if r["at"] > events["restarted"])
        assert seen, "the restarted replica got no traffic"
    finally:
        guard.close()


def test_engine_retries_do_not_multiply_the_router(tmp_path: Path) -> None:
    """Replicas that fail every request: the router tries each once, opens their circuits and
    answers 503 "no available workers"; the engine's retries of that 503 reach no replica."""
    exe = rs.router_executable()
    assert exe is not None
    with FakeOpenAIServer(default=Reply.error(500, "boom")) as a, FakeOpenAIServer(default=Reply.error(500, "boom")) as b:
        cluster = rs.Cluster(tmp_path)
        cluster.replicas = [rs.Replica("a", a.port, "fake", tmp_path / "a"), rs.Replica("b", b.port, "fake", tmp_path / "b")]
        cluster.start_router(exe)
        try:
            engine = OpenAIEngine(cluster.router_url, model=rs.GUARD, max_retries=2, backoff_s=0.05, timeout_s=10)

            async def one() -> None:
                try:
                    from guardrails_plugin.engines.base import GenerationRequest, SessionKey

                    await engine.generate([GenerationRequest(prompt="p", session_id=SessionKey("s1", "g", 0))])
                finally:
                    await engine.aclose()

            with pytest.raises(GuardEngineError) as ei:
                asyncio.run(one())
            assert "503" in str(ei.value)  # the router's answer once every circuit is open
            hits = len(a.completion_requests()) + len(b.completion_requests())
            assert engine.stats["retries"] == 2
            assert hits <= 2, f"{hits} replica attempts for one verdict: retries multiplied"
        finally:
            cluster.stop()
