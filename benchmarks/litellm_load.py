"""Load through a real LiteLLM proxy with and without the guardrails-plugin guardrail.

    python benchmarks/litellm_load.py [--requests 1000] [--concurrency 100] [--guard-latency-ms 20]

Starts the loopback upstream (tests/litellm_support/upstream.py, a short reasoning + answer stream)
and one ``litellm --config`` proxy (1 worker) whose guardrail is opt-in per request, so "with" and
"without" share the proxy, the upstream and the client. The guard runs on a ScriptedEngine (a test
double that sleeps ``--guard-latency-ms`` per guard call and judges nothing); what is measured is the
plugin's overhead in the proxy: prompt check (pre_call), answer + reasoning checks (post_call) and, on
streams, the two monitors with the answer held back until checked.

Reports per mode (non-streaming / streaming) x (without / with): errors (must be 0), p50 / p99 latency
of the whole request (streams: until [DONE]), the overhead ratio with/without at p50 and p99, and the
proxy's own CPU time per request (user + system of the proxy process tree, read from /proc, so it
holds on a box shared with other work where throughput does not): "with" minus "without" is what
the guardrail costs the proxy per request. Writes JSON to --out (default:
benchmarks/results/litellm_load.json).

``--checkout DIR`` (e.g. ``git worktree add /work/wt/before <commit>``) times that tree's
guardrails_plugin in the same run: a second proxy imports it, and the rows alternate between the
two proxies (before without / with, this tree without / with, per mode), so both see the same box.
``--profile DIR`` records each guarded run's proxy with py-spy (``--format speedscope``) into DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from litellm_support.proxy import MASTER_KEY, start_proxy, start_upstream, write_config  # noqa: E402
from litellm_support.upstream import script  # noqa: E402

EXPECTED_CONTENT = "".join(script("fast").content)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


async def one(client: httpx.AsyncClient, stream: bool, guarded: bool) -> tuple[float, str | None]:
    body: dict = {"model": "reasoner", "stream": stream, "messages": [{"role": "user", "content": "[fast] hi"}]}
    if guarded:
        body["guardrails"] = ["gp"]
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                return time.perf_counter() - t0, f"HTTP {r.status_code}: {r.text[:200]}"
            msg = r.json()["choices"][0]["message"]
            if msg.get("content") != EXPECTED_CONTENT:
                return time.perf_counter() - t0, f"wrong content {msg.get('content')!r}"
            return time.perf_counter() - t0, None
        content, finish, done = [], None, False
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return time.perf_counter() - t0, f"HTTP {r.status_code}"
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                ch = json.loads(line[6:])["choices"]
                if ch:
                    content.append(ch[0].get("delta", {}).get("content") or "")
                    finish = ch[0].get("finish_reason") or finish
        dt = time.perf_counter() - t0
        if not done or finish != "stop" or "".join(content) != EXPECTED_CONTENT:
            return dt, f"bad stream done={done} finish={finish} content={''.join(content)!r}"
        return dt, None
    except Exception as exc:  # a client-side error counts as an error, not a crash of the benchmark
        return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


async def run(base_url: str, n: int, conc: int, stream: bool, guarded: bool, pid: int | None = None) -> dict:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120,
                                 headers={"Authorization": f"Bearer {MASTER_KEY}"}) as client:
        await asyncio.gather(*(one(client, stream, guarded) for _ in range(min(50, n))))  # warm-up
        sem = asyncio.Semaphore(conc)

        async def bounded():
            async with sem:
                return await one(client, stream, guarded)

        cpu0 = cpu_seconds(pid) if pid else 0.0
        t0 = time.perf_counter()
        results = await asyncio.gather(*(bounded() for _ in range(n)))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0 if pid else float("nan")
    lat = [r[0] * 1e3 for r in results]
    errors = [r[1] for r in results if r[1]]
    return {
        "stream": stream, "guarded": guarded, "requests": n, "concurrency": conc,
        "errors": len(errors), "error_samples": errors[:3],
        "p50_ms": round(pct(lat, 50), 1), "p99_ms": round(pct(lat, 99), 1),
        "mean_ms": round(statistics.fmean(lat), 1), "throughput_rps": round(n / wall, 1),
        "proxy_cpu_ms_per_req": round(cpu / n * 1e3, 2),
    }


def _proxy(wd: Path, up, latency_ms: float, tree: Path | None):
    cfg = write_config(
        wd,
        [{"model_name": "reasoner", "litellm_params": {
            "model": "hosted_vllm/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}}],
        [{"guardrail_name": "gp", "litellm_params": {
            "guardrail": "scripted_guardrail.ScriptedGuardrail", "mode": ["pre_call", "post_call"],
            "default_on": False, "guard_latency_ms": latency_ms}}],
    )
    env = None
    if tree is not None:  # that tree's guardrails_plugin first; the test support of this one
        env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests/litellm_support"), str(tree)])}
    return start_proxy(cfg, wd, extra_env=env)


def _profiled(proxy, out: Path | None, name: str):
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(spy), "record", "-p", str(proxy.proc.pid), "-r", "200", "-s", "--format",
                             "speedscope", "-o", str(out / f"{name}.speedscope.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--guard-latency-ms", type=float, default=20.0)
    ap.add_argument("--checkout", type=Path, help="another tree to time in the same run (the 'before')")
    ap.add_argument("--profile", type=Path, help="py-spy each guarded run into this folder")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/litellm_load.json")
    args = ap.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

    wd = Path(tempfile.mkdtemp(prefix="litellm-load-"))
    up = start_upstream(wd)
    trees: dict[str, Path | None] = {"this": None}
    if args.checkout is not None:
        trees = {"before": args.checkout.resolve(), "this": None}
    proxies = {}
    rows = []
    try:
        for name, tree in trees.items():
            (wd / name).mkdir()
            proxies[name] = _proxy(wd / name, up, args.guard_latency_ms, tree)
        for stream in (False, True):
            for name, proxy in proxies.items():
                for guarded in (False, True):
                    spy = _profiled(proxy, args.profile, f"{name}-{'stream' if stream else 'non-stream'}") if guarded else None
                    row = asyncio.run(run(proxy.base_url, args.requests, args.concurrency, stream, guarded, proxy.proc.pid))
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                        spy.wait(60)
                    row["tree"] = name
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        up.stop()

    load = os.getloadavg()
    summary = {"proxy_startup_s": {n: round(p.startup_s, 1) for n, p in proxies.items()},
               "guard_latency_ms": args.guard_latency_ms, "cpu_count": os.cpu_count(),
               "loadavg_after": [round(x, 2) for x in load], "trees": {n: str(t or REPO) for n, t in trees.items()},
               "rows": rows, "overhead": {}}
    print(f"\nguard latency {args.guard_latency_ms} ms (scripted); load average after the run {load[0]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'tree':<8}{'mode':<12}{'plugin':<8}{'errors':>7}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>9}{'proxy CPU ms/req':>18}")
    for r in rows:
        print(f"{r['tree']:<8}{'stream' if r['stream'] else 'non-stream':<12}{'with' if r['guarded'] else 'without':<8}"
              f"{r['errors']:>7}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['throughput_rps']:>9}{r['proxy_cpu_ms_per_req']:>18}")
    for name in trees:
        for stream in (False, True):
            base, with_ = (next(r for r in rows if r["tree"] == name and r["stream"] == stream and r["guarded"] == g)
                           for g in (False, True))
            ov = {"p50_ratio": round(with_["p50_ms"] / base["p50_ms"], 2),
                  "p99_ratio": round(with_["p99_ms"] / base["p99_ms"], 2),
                  "guard_cpu_ms_per_req": round(with_["proxy_cpu_ms_per_req"] - base["proxy_cpu_ms_per_req"], 2),
                  "cpu_ratio": round(with_["proxy_cpu_ms_per_req"] / base["proxy_cpu_ms_per_req"], 3),
                  "throughput_ratio": round(with_["throughput_rps"] / base["throughput_rps"], 3)}
            summary["overhead"][f"{name}-{'stream' if stream else 'non_stream'}"] = ov
            print(f"{name:<8}{'stream' if stream else 'non-stream':<12}p50 x{ov['p50_ratio']}  p99 x{ov['p99_ratio']}  "
                  f"req/s x{ov['throughput_ratio']}  proxy CPU x{ov['cpu_ratio']} (+{ov['guard_cpu_ms_per_req']} ms per request)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    total_errors = sum(r["errors"] for r in rows)
    sys.exit(1 if total_errors else 0)


if __name__ == "__main__":
    main()
