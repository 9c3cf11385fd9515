"""Scale-out on vllm-router, measured on loopback: requests per replica, stickiness (the share of a
stream's checks that landed on its main replica) and errors while a replica is killed and restarted.

The real ``vllm-router`` binary fronts three guard replicas (tests/router_support.py: two fake
replicas and, with ``--real``, a ``transformers serve`` with a tiny scripted model as the third);
concurrent reasoning monitors stream through Guard -> OpenAIEngine -> router. Runs:

* ``consistent_hash``: the supported policy; the plugin's session key (``x-session-id``) on every
  check of a stream;
* ``round_robin`` and ``cache_aware`` (the router's default): the same streams through a router
  with that policy over the same replicas, for comparison;
* ``single checks``: checks outside any stream (``check_reasoning``), each with a random key;
* ``kill/recover``: ``consistent_hash`` while replica-a is SIGKILLed and restarted; the engine has
  no retries, so every check that survives is carried by the router's retries.

Also the router's own cost per request (loopback, sequential) and the time a restarted replica
takes to get traffic again.

    python benchmarks/router_bench.py                 # ~1 min on 2 CPU cores
    python benchmarks/router_bench.py --real --streams 48 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import router_support as rs  # noqa: E402

from guardrails_plugin import Guard, GuardConfig  # noqa: E402
from guardrails_plugin.engines.openai_engine import OpenAIEngine  # noqa: E402


def config(url: str) -> GuardConfig:
    return GuardConfig.build(
        models={rs.GUARD: {"family": "reasoningshield", "engine": "openai", "base_url": url,
                           "served_model_name": rs.GUARD, "max_new_tokens": 16, "timeout_s": 30}},
        stages={"prompt": {"enabled": False}, "response": {"enabled": False}, "reasoning": {"guards": [rs.GUARD]}},
    )  # fmt: skip


def summarise(name: str, cluster: rs.Cluster, streams: list[rs.StreamResult], since: float) -> dict[str, Any]:
    table = cluster.per_session(streams, since=since)
    share = rs.stickiness({k: v for k, v in table.items() if v})
    per_replica = {r.name: sum(c.get(r.name, 0) for c in table.values()) for r in cluster.replicas}
    mains = [rs.main_replica(c) for c in table.values() if c]
    return {
        "run": name,
        "requests_per_replica": per_replica,
        "streams_per_replica": {r.name: mains.count(r.name) for r in cluster.replicas},
        "checks": sum(s.checks for s in streams),
        "stickiness_mean": statistics.fmean(share.values()) if share else None,
        "stickiness_min": min(share.values()) if share else None,
        "streams_fully_sticky": sum(1 for v in share.values() if v == 1.0),
        "streams": len(streams),
        "failed_verdicts": sum(len(s.failed) for s in streams),
        "stream_errors": sum(1 for s in streams if s.error),
    }


def router_overhead(cluster: rs.Cluster, n: int = 200) -> dict[str, float]:
    """Median loopback latency of one check straight to a fake replica and through the router."""
    body = {"model": rs.GUARD, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
    out = {}
    with httpx.Client() as c:
        for label, url in (("direct", cluster.replicas[1].url), ("router", cluster.router_url)):
            lat = []
            for i in range(n):
                t = time.perf_counter()
                c.post(url + "/v1/chat/completions", json=body, headers={"x-session-id": f"ovh{i % 7}"}).raise_for_status()
                lat.append((time.perf_counter() - t) * 1e3)
            out[label] = statistics.median(lat)
    out["router_added_ms"] = out["router"] - out["direct"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=36)
    ap.add_argument("--tokens", type=int, default=480, help="tokens per stream (a check every 48)")
    ap.add_argument("--real", action="store_true", help="third replica: transformers serve, tiny scripted model")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = rs.start_cluster(Path(tmp), real_server=a.real)
        try:
            extra: dict[str, Any] = {"replicas": {r.name: r.kind for r in cluster.replicas}}
            with Guard(config(cluster.router_url)) as guard:
                t0 = time.time()
                rows.append(summarise("consistent_hash", cluster,
                                      asyncio.run(rs.run_streams(guard, a.streams, tokens=a.tokens)), t0))
            exe = rs.router_executable()
            assert exe is not None
            for i, policy in enumerate(("round_robin", "cache_aware")):
                other = cluster.with_policy(exe, policy)
                try:
                    with Guard(config(other.router_url)) as guard:
                        t0 = time.time()
                        streams = asyncio.run(rs.run_streams(guard, a.streams, tokens=a.tokens, offset=10_000 * (i + 1)))
                        rows.append(summarise(policy, cluster, streams, t0))
                finally:
                    other.stop_router()
            with Guard(config(cluster.router_url)) as guard:
                t0 = time.time()
                for i in range(a.streams * 2):
                    guard.check_reasoning(query=f"q{i}", reasoning=f"single check {i} " * 20)
                per = {r.name: sum(1 for rec in cluster.fake_log(r) if rec["at"] >= t0) for r in cluster.replicas}
                extra["single_checks_per_replica"] = per

            victim = cluster.replicas[0]
            engine = OpenAIEngine(cluster.router_url, model=rs.GUARD, max_retries=0, timeout_s=30)
            events: dict[str, float] = {}

            async def chaos() -> None:
                await asyncio.sleep(1.0)
                cluster.kill(victim)
                events["killed"] = time.time()
                await asyncio.sleep(1.5)
                cluster.start_fake(victim)
                events["restarted"] = time.time()

            with Guard(config(cluster.router_url), engine=engine) as guard:
                async def kill_run() -> list[rs.StreamResult]:
                    res, _ = await asyncio.gather(
                        rs.run_streams(guard, a.streams, tokens=a.tokens * 2, offset=20_000), chaos())
                    return res

                t0 = time.time()
                streams = asyncio.run(kill_run())
                row = summarise("kill/recover", cluster, streams, t0)
                back = [r["at"] for r in cluster.fake_log(victim) if r["at"] > events["restarted"]]
                deadline = time.time() + 30
                while not back and time.time() < deadline:  # traffic returns once its circuit closes
                    asyncio.run(rs.run_streams(guard, 6, tokens=96, offset=30_000 + int(time.time())))
                    back = [r["at"] for r in cluster.fake_log(victim) if r["at"] > events["restarted"]]
                row["victim_back_after_s"] = round(min(back) - events["restarted"], 2) if back else None
                row["victim_requests_while_dead"] = 0  # a dead process logs nothing, by construction
                rows.append(row)
            extra["overhead"] = router_overhead(cluster)
        finally:
            cluster.stop()

    names = list(rows[0]["requests_per_replica"])
    print(f"replicas: {extra['replicas']}")
    head = ["run", *names, "checks", "stickiness mean / min", "fully sticky", "failed verdicts", "errors"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["run"], *(f"{r['requests_per_replica'][n]} ({r['streams_per_replica'][n]} streams)" for n in names),
                 str(r["checks"]), f"{r['stickiness_mean']:.3f} / {r['stickiness_min']:.3f}",
                 f"{r['streams_fully_sticky']}/{r['streams']}", str(r["failed_verdicts"]), str(r["stream_errors"])]
        print("| " + " | ".join(cells) + " |")
    print(f"single checks (no stream, a random key each): {extra['single_checks_per_replica']} requests per replica")
    kr = rows[-1]
    print(f"kill/recover: replica-a SIGKILLed 1.0 s in, restarted 1.5 s later; traffic back "
          f"{kr['victim_back_after_s']} s after the restart")
    o = extra["overhead"]
    print(f"router cost per request (loopback, median of 200): direct {o['direct']:.2f} ms, "
          f"through vllm-router {o['router']:.2f} ms (+{o['router_added_ms']:.2f} ms)")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, **extra}, indent=2))


if __name__ == "__main__":
    main()
