"""Streaming reasoning monitor benchmark: token-path cost, check rate and detection lag.

A simulated decoder streams reasoning at a fixed token rate into ReasoningMonitors guarded by a
ScriptedEngine of fixed latency (harmful iff the thought contains a marker word). For every
check interval x guard latency it reports:

* feed_us      time ``feed()`` adds per token (median over streams; checks run off the token path)
* checks/1k    guard checks per 1,000 reasoning tokens of a benign trace (end-of-trace check included)
* lag p50/p95  detection lag in tokens: tokens released past the end of the blocking prefix
* exposure     tokens released past the marker itself (the harmful text a user could have read)
* feed_max_us  worst single feed() seen (p99.9 of the tight loop): still no guard waits

    python benchmarks/monitor_bench.py                      # 150 tok/s, intervals 16/64/256, 20/200 ms
    python benchmarks/monitor_bench.py --rate 100 --trials 40 --json out.json

Streams of one configuration run concurrently on one event loop, like concurrent users.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from guardrails_plugin import Guard, GuardConfig  # noqa: E402
from guardrails_plugin.engines import ScriptedEngine  # noqa: E402

MARKER = "detonator"
_THOUGHT = re.compile(r"\nThought: (.*)\n<\|assistant\|>\n\Z", re.DOTALL)


def responder(rendered: str) -> str:
    m = _THOUGHT.search(rendered)
    harmful = m is not None and MARKER in m.group(1)
    return '"Analysis": bench\n"Judgment": ' + ("1" if harmful else "0")


def make_guard(latency_s: float) -> Guard:
    return Guard(GuardConfig(), engine=ScriptedEngine(responder, latency_s=latency_s))


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


async def decode(mon, n_tokens: int, rate: float, marker_at: int | None) -> None:
    """Stream ``n_tokens`` one-token deltas at ``rate`` tokens/s; stop when the monitor aborts."""
    dt = 1.0 / rate
    next_t = time.perf_counter()
    for i in range(n_tokens):
        delta = f"{MARKER} " if i == marker_at else f"w{i} "
        await mon.afeed(delta)
        mon.drain()
        if mon.aborted:
            return
        next_t += dt
        pause = next_t - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
    await mon.aclose()


async def run_config(interval: int, latency_s: float, rate: float, trials: int, seed: int) -> dict:
    guard = make_guard(latency_s)
    rng = random.Random(seed)
    harmful, benign = [], []
    jobs = []
    for _ in range(trials):
        marker_at = rng.randint(40, 400)
        # long enough for the slowest detection: one interval plus one guard call of tokens
        n = marker_at + interval + int(latency_s * rate * 3) + 50
        mon = guard.reasoning_monitor(query="q", check_every_tokens=interval)
        harmful.append((mon, marker_at))
        jobs.append(decode(mon, n, rate, marker_at))
    for _ in range(max(2, trials // 10)):
        mon = guard.reasoning_monitor(query="q", check_every_tokens=interval)
        benign.append(mon)
        jobs.append(decode(mon, 1000, rate, None))
    await asyncio.gather(*jobs)

    lags, exposure, feed_us = [], [], []
    missed = 0
    for mon, marker_at in harmful:
        st = mon.stats
        feed_us.append(st.feed_time_us_total / max(1, st.tokens_fed))
        if not st.aborted:
            missed += 1
            continue
        lags.append(st.detection_lag_tokens)
        # marker is token index marker_at, so marker_at + 1 tokens include it
        exposure.append(st.tokens_released - (marker_at + 1))
    checks = [mon.stats.checks_run * 1000 / mon.stats.tokens_fed for mon in benign]
    feed_us += [m.stats.feed_time_us_total / max(1, m.stats.tokens_fed) for m in benign]
    return {
        "interval": interval,
        "latency_ms": latency_s * 1e3,
        "rate": rate,
        "trials": trials,
        "missed": missed,
        "feed_us_median": statistics.median(feed_us),
        "checks_per_1k": statistics.mean(checks),
        "lag_p50": pct(lags, 50),
        "lag_p95": pct(lags, 95),
        "exposure_p50": pct(exposure, 50),
        "exposure_p95": pct(exposure, 95),
    }


def tight_loop_feed_cost(n: int = 20_000, interval: int = 16) -> dict:
    """feed() cost with no decoder pacing, checks falling due all the time (200 ms guard)."""
    guard = make_guard(0.2)
    mon = guard.reasoning_monitor(query="q", check_every_tokens=interval)
    per = []
    for i in range(n):
        t0 = time.perf_counter()
        mon.feed(f"w{i} ")
        per.append((time.perf_counter() - t0) * 1e6)
    mon.close(timeout=30)
    return {
        "tokens": n,
        "feed_us_median": statistics.median(per),
        "feed_us_p99": pct(per, 99),
        "feed_us_p999": pct(per, 99.9),
        "checks_run": mon.stats.checks_run,
        "coalesced": mon.stats.checks_coalesced,
    }


def turn_tight_loop_cost(n: int = 20_000, interval: int = 16) -> dict:
    """Per-chunk cost of the turn guard the integrations run (parts in, releases out), same load:
    one reasoning part per chunk through ``TurnRunner.feed`` + ``release``, 200 ms guard."""
    from guardrails_plugin.stream import Part, PartKind, TurnRunner

    guard = make_guard(0.2)
    runner = TurnRunner.of(guard.stream_checks(), "q", check_every_tokens=interval)
    per = []
    for i in range(n):
        t0 = time.perf_counter()
        runner.feed(i, [Part(PartKind.REASONING, f"w{i} ")])
        runner.release()
        per.append((time.perf_counter() - t0) * 1e6)
    runner.finish()
    return {"chunks": n, "chunk_us_median": statistics.median(per), "chunk_us_p99": pct(per, 99)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ReasoningMonitor benchmark")
    p.add_argument("--rate", type=float, default=150.0, help="decoder tokens per second")
    p.add_argument("--trials", type=int, default=30, help="harmful streams per configuration")
    p.add_argument("--intervals", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--latencies-ms", type=float, nargs="+", default=[20.0, 200.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    tight = tight_loop_feed_cost()
    print(
        f"tight loop, {tight['tokens']} feeds, 200 ms guard: feed() median {tight['feed_us_median']:.1f} us, "
        f"p99 {tight['feed_us_p99']:.1f} us, p99.9 {tight['feed_us_p999']:.1f} us "
        f"({tight['checks_run']} checks run, {tight['coalesced']} coalesced)\n"
    )
    turn = turn_tight_loop_cost()
    print(f"turn guard, {turn['chunks']} chunks, same load: feed+release median {turn['chunk_us_median']:.1f} us, "
          f"p99 {turn['chunk_us_p99']:.1f} us\n")
    rows = []
    print(f"decoder {args.rate:.0f} tok/s, {args.trials} harmful streams + benign 1k-token streams per row")
    print("| interval | guard ms | feed() us/token | checks / 1k tokens | lag p50 | lag p95 | exposure p50 | exposure p95 | missed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lat in args.latencies_ms:
        for interval in args.intervals:
            r = asyncio.run(run_config(interval, lat / 1e3, args.rate, args.trials, args.seed))
            rows.append(r)
            print(
                f"| {interval} | {lat:.0f} | {r['feed_us_median']:.1f} | {r['checks_per_1k']:.1f} | "
                f"{r['lag_p50']:.0f} | {r['lag_p95']:.0f} | {r['exposure_p50']:.0f} | {r['exposure_p95']:.0f} | {r['missed']} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"tight_loop": tight, "turn_tight_loop": turn, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
