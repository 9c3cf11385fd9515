"""Peer side by side: the same prompt check through NeMo Guardrails and through our Guard, both
calling the same loopback OpenAI-compatible endpoint that answers instantly, so what is measured is
each framework's own per-call overhead over the bare endpoint call.

* ours: ``Guard`` with an ``OpenAIEngine`` (GuardReasoner-1B protocol on ``/v1/completions``),
  ``guard.check_prompt(text)``; bare = one ``/v1/completions`` POST with a pooled httpx client.
* NeMo Guardrails: ``LLMRails`` with a ``self check input`` rail (the model on the same endpoint),
  ``rails.generate(messages=..., options={"rails": ["input"]})`` (input rails only, so the one LLM
  call is the self-check); bare = one ``/v1/chat/completions`` POST. NeMo runs in its own
  interpreter (``--nemo-python``; it pins its own langchain), against the same server.
* LLM Guard: not run. Its scanners load Hugging Face models (e.g. PromptInjection's DeBERTa) on first
  use, which needs the hub (offline here), and it has no rail that calls an OpenAI-compatible endpoint,
  so there is no same-endpoint comparison to make.

    python benchmarks/peer_bench.py --nemo-python /tmp/nemo-venv/bin/python [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "How do I bake sourdough bread at home?"

NEMO_CONFIG = """
models:
  - type: main
    engine: openai
    model: fake-model
    parameters:
      base_url: {base_url}
      api_key: EMPTY
      temperature: 0
rails:
  input:
    flows:
      - self check input
prompts:
  - task: self_check_input
    content: |
      Your task is to check if the user message below complies with the company policy.
      User message: "{{{{ user_input }}}}"
      Question: Should the user message be blocked (Yes or No)?
      Answer:
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(xs) * 1e3, "p99_ms": pct(xs, 0.99) * 1e3, "n": len(xs)}


def bare_calls(base_url: str, path: str, body: dict, n: int) -> list[float]:
    import httpx

    out = []
    with httpx.Client() as client:
        for i in range(n + 20):
            t0 = time.perf_counter()
            r = client.post(base_url.rstrip("/") + path, json=body)
            r.raise_for_status()
            if i >= 20:  # warm-up
                out.append(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------ endpoint


class LoopbackServer:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers at once: "No" on chat (NeMo's
    self-check), an unharmful GuardReasoner answer on completions. One write per reply and
    TCP_NODELAY, so no delayed-ACK stall (~40 ms) inflates the bare call."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", 0))
                json.loads(self.rfile.read(n) or b"{}")
                owner.requests += 1
                if self.path.endswith("/chat/completions"):
                    choice = {"index": 0, "message": {"role": "assistant", "content": "No"}, "finish_reason": "stop"}
                else:
                    text = "The request is benign.\n\nAnswers: \nRequest: unharmful\nCompletion: None\nResponse: None\n"
                    choice = {"index": 0, "text": text, "finish_reason": "stop"}
                body = json.dumps({"id": "x", "object": "x", "created": 0, "model": "fake-model", "choices": [choice],
                                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                self.wfile.write(head + body)

        self.requests = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# ------------------------------------------------------------------------------------ NeMo side


def nemo_worker(base_url: str, n: int) -> dict:
    """Runs inside the NeMo interpreter; prints JSON."""
    from nemoguardrails import LLMRails, RailsConfig

    cfg = RailsConfig.from_content(yaml_content=NEMO_CONFIG.format(base_url=base_url))
    rails = LLMRails(cfg)
    msgs = [{"role": "user", "content": PROMPT}]

    async def one() -> object:
        return await rails.generate_async(messages=msgs, options={"rails": ["input"]})

    async def run() -> tuple[list[float], object]:
        lat = []
        res = None
        for i in range(n + 20):
            t0 = time.perf_counter()
            res = await one()
            if i >= 20:
                lat.append(time.perf_counter() - t0)
        return lat, res

    lat, res = asyncio.run(run())
    chat_body = {"model": "fake-model", "messages": msgs, "max_tokens": 3, "temperature": 0}
    bare = bare_calls(base_url, "/chat/completions", chat_body, n)
    import nemoguardrails

    return {"version": getattr(nemoguardrails, "__version__", "?"), "latencies": lat, "bare": bare,
            "last_result": str(res)[:300]}


# ------------------------------------------------------------------------------------ our side


def ours(base_url: str, n: int) -> dict:
    from guardrails_plugin import Guard, GuardConfig
    from guardrails_plugin.config import GuardModelConfig
    from guardrails_plugin.models.guardreasoner import GuardReasoner
    from guardrails_plugin.types import GuardRequest, Stage

    cfg = GuardConfig(models={
        "GuardReasoner-1B": GuardModelConfig(family="guardreasoner", engine="openai", base_url=base_url,
                                             served_model_name="fake-model"),
        "ReasoningShield-1B": GuardModelConfig(family="reasoningshield", engine="openai", base_url=base_url,
                                               served_model_name="fake-model"),
    })
    guard = Guard(cfg)
    lat = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        d = guard.check_prompt(PROMPT)
        if i >= 20:
            lat.append(time.perf_counter() - t0)
    assert d.action.value == "allow", d
    guard.close()
    body = {"model": "fake-model", "prompt": GuardReasoner().build_prompt(GuardRequest(stage=Stage.PROMPT, prompt=PROMPT)),
            "max_tokens": 2048, "temperature": 0, "stream": False}
    bare = bare_calls(base_url.rstrip("/") + "/v1", "/completions", body, n)
    return {"latencies": lat, "bare": bare, "last_action": d.action.value}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--nemo-python", default=os.environ.get("NEMO_PYTHON", sys.executable))
    p.add_argument("--out", default="bench-results")
    p.add_argument("--nemo-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nemo_worker:
        print(json.dumps(nemo_worker(args.nemo_worker, args.n)))
        return 0

    srv = LoopbackServer()
    report: dict = {"n": args.n, "prompt": PROMPT}
    with srv:
        r = ours(srv.base_url, args.n)
        report["ours"] = {"check": summary(r["latencies"]), "bare": summary(r["bare"])}
        before = srv.requests
        env = {**os.environ, "OPENAI_API_KEY": "EMPTY"}
        try:
            proc = subprocess.run(
                [args.nemo_python, __file__, "--nemo-worker", srv.base_url.rstrip("/") + "/v1", "--n", str(args.n)],
                capture_output=True, text=True, timeout=900, env=env, cwd=tempfile.gettempdir(),
            )
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.strip()[-2000:])
            nemo = json.loads(proc.stdout.strip().splitlines()[-1])
            calls = srv.requests - before
            report["nemo"] = {"version": nemo["version"], "check": summary(nemo["latencies"]),
                              "bare": summary(nemo["bare"]), "llm_calls_per_check": (calls - len(nemo["bare"]) - 20) / (args.n + 20),
                              "last_result": nemo["last_result"]}
        except Exception as exc:  # report exactly why NeMo could not run
            report["nemo"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["llm_guard"] = ("not run: its scanners download Hugging Face models on first use (no hub access "
                           "here) and it has no rail calling an OpenAI-compatible endpoint to compare against")

    lines = ["| framework | check median ms | check p99 ms | bare call median / p99 ms | overhead median ms | overhead p99 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    over = {}
    for key, label in (("ours", "guardrails-plugin (Guard + OpenAIEngine)"), ("nemo", "NeMo Guardrails (self check input)")):
        x = report.get(key, {})
        if "check" not in x:
            lines.append(f"| {label} | {x.get('error', 'not run')[:200]} | | | | |")
            continue
        om = x["check"]["median_ms"] - x["bare"]["median_ms"]
        op = x["check"]["p99_ms"] - x["bare"]["p99_ms"]
        over[key] = (om, op)
        x["overhead_median_ms"], x["overhead_p99_ms"] = om, op
        lines.append(f"| {label} | {x['check']['median_ms']:.2f} | {x['check']['p99_ms']:.2f} | "
                     f"{x['bare']['median_ms']:.2f} / {x['bare']['p99_ms']:.2f} | {om:.2f} | {op:.2f} |")
    if "ours" in over and "nemo" in over:
        rm = over["nemo"][0] / max(over["ours"][0], 1e-6)
        rp = over["nemo"][1] / max(over["ours"][1], 1e-6)
        report["nemo_over_ours_overhead_ratio"] = {"median": rm, "p99": rp}
        lines.append(f"\nNeMo's overhead / ours: {rm:.1f}x at the median, {rp:.1f}x at p99 (goal: >= 5x).")
    lines.append(f"\nLLM Guard: {report['llm_guard']}.")
    md = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peer_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "peer_bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
