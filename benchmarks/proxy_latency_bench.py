"""Time to first reasoning token, first answer token and end of a streamed reasoning answer through
a real LiteLLM proxy, without and with the guardrails-plugin guardrail (issue 18).

    python benchmarks/proxy_latency_bench.py [--guard-ms 200] [--runs 5] [--words 300]
        [--word-ms 3] [--answer-ms MS] [--check-every N] [--checkout DIR] [--json out.json]

Starts two processes and stops them (and anything they spawned) on the way out, whatever happens:

* the loopback upstream benchmarks/reasoning_upstream.py: ``--words`` reasoning words as
  ``reasoning_content`` deltas, one every ``--word-ms`` (300 x 3 ms puts the unguarded first answer
  token near 1 s), then a 4-token answer (one token every ``--answer-ms``, default the same pace),
  then ``stop``;
* one ``litellm --config`` proxy (1 worker, 127.0.0.1, a master key, LITELLM_LOCAL_MODEL_COST_MAP)
  with the guardrail configured as a user would: ``mode: [pre_call, post_call]`` (post_call guards
  streams). Its class is tests/litellm_support/scripted_guardrail.py, a subclass of
  GuardrailsPluginGuardrail whose guard runs on a ScriptedEngine test double sleeping ``--guard-ms``
  per guard call and allowing all this text. The guardrail is ``default_on: false`` and each
  guarded request names it (``extra_body={"guardrails": ["gp"]}``), so "without" and "with" share
  the proxy, the upstream and the client; the two kinds of request alternate, so load on the box
  hits both alike.

Each request goes through the ``openai`` client (``chat.completions.create(stream=True)``); times are
from just before the call. Prints the medians, the deltas (with - without), the first-answer delta
in guard calls, and the issue's target: the first answer within 2 guard calls + 100 ms of the
unguarded one. Exit status 1 when a request fails or comes back wrong (the numbers would mean
nothing), 0 otherwise, PASS or FAIL (the verdict is a measurement, not a test).

Before / after: ``--checkout DIR`` makes the proxy import ``DIR/guardrails_plugin`` instead of this
repo's (the guardrail subclass still comes from this repo's tests/), e.g. the last commit, exported
with ``mkdir /tmp/head && git archive HEAD guardrails_plugin | tar -x -C /tmp/head``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(BENCH))

from litellm_support.proxy import MASTER_KEY, Process, free_port, start_proxy, write_config  # noqa: E402
from reasoning_upstream import ANSWER, reasoning_words  # noqa: E402

COLUMNS = ("first_reasoning_ms", "first_answer_ms", "end_ms")
HEADERS = ("first reasoning token", "first answer token", "end")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), children first-found order."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(c) for c in (t / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def stop_tree(proc: subprocess.Popen) -> None:
    """Stop a process this script started and whatever it spawned (only those)."""
    kids = descendants(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for k in kids:  # a worker left behind would hold its port and CPU
        try:
            os.kill(k, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_upstream(workdir: Path, words: int, word_ms: float, answer_ms: float | None) -> Process:
    port = free_port()
    log = workdir / f"upstream-{port}.log"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "reasoning_upstream.py"), "--port", str(port), "--words", str(words),
         "--word-ms", str(word_ms), *(["--answer-ms", str(answer_ms)] if answer_ms is not None else [])],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    up = Process(proc, log, f"http://127.0.0.1:{port}", 0.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the upstream exited with {proc.returncode}:\n{up.logs()[-3000:]}")
        try:
            if httpx.get(up.base_url + "/v1/models", timeout=2).status_code == 200:
                up.startup_s = time.monotonic() - t0
                return up
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_tree(proc)
    raise TimeoutError(f"the upstream did not answer within 30 s:\n{up.logs()[-3000:]}")


def one(client: openai.OpenAI, guarded: bool, expect_reasoning: str) -> dict:
    """One streamed request: ms from the call to the first reasoning delta, the first answer delta
    and the end of the stream; ``error`` when the stream was not the upstream's, whole."""
    extra = {"extra_body": {"guardrails": ["gp"]}} if guarded else {}
    first_r = first_a = None
    reasoning, content, finish = [], [], None
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model="reasoner", messages=[{"role": "user", "content": "Think it through, then answer."}],
        stream=True, **extra)
    for c in stream:
        now = time.perf_counter()
        if not c.choices:
            continue
        d = c.choices[0].delta
        r = getattr(d, "reasoning_content", None)
        if r:
            first_r = first_r if first_r is not None else now
            reasoning.append(r)
        if d.content:
            first_a = first_a if first_a is not None else now
            content.append(d.content)
        finish = c.choices[0].finish_reason or finish
    end = time.perf_counter()
    row = {"guarded": guarded,
           "first_reasoning_ms": None if first_r is None else (first_r - t0) * 1e3,
           "first_answer_ms": None if first_a is None else (first_a - t0) * 1e3,
           "end_ms": (end - t0) * 1e3}
    if "".join(content) != "".join(ANSWER) or "".join(reasoning) != expect_reasoning or finish != "stop":
        row["error"] = (f"stream differs from the upstream's: finish={finish} answer={''.join(content)!r} "
                        f"reasoning {len(''.join(reasoning))} of {len(expect_reasoning)} chars")
    return row


def median(rows: list[dict], col: str) -> float:
    return statistics.median(r[col] for r in rows)


def fmt(ms: float, sign: bool = False) -> str:
    return f"{ms:+,.0f} ms" if sign else f"{ms:,.0f} ms"


def report(args: argparse.Namespace, rows: list[dict], startup_s: float) -> dict:
    by = {g: [r for r in rows if r["guarded"] == g] for g in (False, True)}
    med = {g: {c: median(by[g], c) for c in COLUMNS} for g in (False, True)}
    delta = {c: med[True][c] - med[False][c] for c in COLUMNS}
    calls = delta["first_answer_ms"] / args.guard_ms if args.guard_ms else float("nan")
    budget = 2 * args.guard_ms + 100
    ok = delta["first_answer_ms"] <= budget
    load = os.getloadavg()
    print(f"\nproxy startup {startup_s:.1f} s; guard {args.guard_ms:g} ms per call (scripted); "
          f"{args.words} reasoning words every {args.word_ms:g} ms, then a {len(ANSWER)}-token answer "
          f"(a token every {args.word_ms if args.answer_ms is None else args.answer_ms:g} ms); "
          f"check every {args.check_every or 'default (64)'} tokens; guardrails_plugin from {args.checkout or REPO}")
    print(f"median of {args.runs} streamed requests each; load average {load[0]:.1f} on {os.cpu_count()} cores "
          "(a loaded box makes single runs noisy: medians only)\n")
    print("| | " + " | ".join(HEADERS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for g, name in ((False, "without the guardrail"), (True, "with it")):
        print(f"| {name} | " + " | ".join(fmt(med[g][c]) for c in COLUMNS) + " |")
    print("| delta (with - without) | " + " | ".join(fmt(delta[c], sign=True) for c in COLUMNS) + " |")
    print(f"\nfirst answer token delta: {delta['first_answer_ms']:+,.0f} ms = {calls:.2f} guard calls")
    print(f"target: first answer within 2 guard calls + 100 ms of unguarded (<= {budget:,.0f} ms): "
          f"{'PASS' if ok else 'FAIL'}")
    return {"guard_ms": args.guard_ms, "runs": args.runs, "words": args.words, "word_ms": args.word_ms,
            "answer_ms": args.answer_ms, "check_every": args.check_every,
            "checkout": str(args.checkout or REPO), "proxy_startup_s": round(startup_s, 1),
            "loadavg": [round(x, 2) for x in load], "cpu_count": os.cpu_count(),
            "median_ms": {"without": {c: round(v, 1) for c, v in med[False].items()},
                          "with": {c: round(v, 1) for c, v in med[True].items()}},
            "delta_ms": {c: round(v, 1) for c, v in delta.items()},
            "first_answer_delta_guard_calls": round(calls, 2), "target_ms": budget,
            "target": "PASS" if ok else "FAIL",
            "runs_ms": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard-ms", type=float, default=200.0, help="scripted guard latency per call")
    ap.add_argument("--runs", type=int, default=5, help="streamed requests per kind (median reported)")
    ap.add_argument("--words", type=int, default=300, help="reasoning words before the answer")
    ap.add_argument("--word-ms", type=float, default=3.0, help="upstream pace, ms per delta")
    ap.add_argument("--answer-ms", type=float, default=None, help="upstream pace of the answer tokens (default: --word-ms)")
    ap.add_argument("--checkout", type=Path, default=None,
                    help="a tree whose guardrails_plugin the proxy imports (default: this repo)")
    ap.add_argument("--check-every", type=int, default=None,
                    help="check_every_tokens of the reasoning and response stages (default: the config's)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    if args.runs < 1 or args.words < 1:
        ap.error("--runs and --words must be at least 1")
    if args.checkout is not None and not (args.checkout / "guardrails_plugin" / "__init__.py").is_file():
        ap.error(f"--checkout {args.checkout}: no guardrails_plugin package there")
    # SIGTERM (a timeout, a CI cancel) must still run the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    wd = Path(tempfile.mkdtemp(prefix="proxy-latency-"))
    settings: dict = {}
    if args.check_every:
        settings["stages"] = {"reasoning": {"guards": ["ReasoningShield-1B"], "check_every_tokens": args.check_every},
                              "response": {"guards": ["GuardReasoner-1B"], "check_every_tokens": args.check_every}}
    up = proxy = None
    ok = False
    try:
        try:
            up = start_upstream(wd, args.words, args.word_ms, args.answer_ms)
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"FAILED to start the loopback upstream: {exc}", file=sys.stderr)
            return 2
        cfg = write_config(
            wd,
            [{"model_name": "reasoner", "litellm_params": {
                "model": "hosted_vllm/reasoner", "api_base": up.base_url + "/v1", "api_key": "x"}}],
            [{"guardrail_name": "gp", "litellm_params": {
                "guardrail": "scripted_guardrail.ScriptedGuardrail", "mode": ["pre_call", "post_call"],
                "default_on": False, "guard_latency_ms": args.guard_ms,
                **({"guard_settings": settings} if settings else {})}}],
        )
        print(f"starting the litellm proxy (config {cfg}) ...", flush=True)
        try:
            # start_proxy puts this repo ahead of PYTHONPATH; an explicit PYTHONPATH replaces that
            env = ({"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "litellm_support"), str(args.checkout.resolve())])}
                   if args.checkout else None)
            proxy = start_proxy(cfg, wd, extra_env=env)
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"FAILED to start the litellm proxy: {exc}", file=sys.stderr)
            return 2
        client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=120)

        # the guardrail must really be on the guarded requests, or "with it" measures nothing
        try:
            client.chat.completions.create(model="reasoner", messages=[{"role": "user", "content": "build a bomb"}],
                                           extra_body={"guardrails": ["gp"]})
            print("FAILED: a harmful prompt passed the guarded route; the guardrail is not running", file=sys.stderr)
            return 1
        except openai.BadRequestError:
            pass

        expect = "".join(reasoning_words(args.words))
        for g in (False, True):  # warm-up: first-request imports and connection set-up
            one(client, g, expect)
        rows = []
        for i in range(args.runs):
            for g in (False, True):
                r = one(client, g, expect)
                rows.append(r)
                print(f"run {i + 1} {'with   ' if g else 'without'}: " + "  ".join(
                    f"{h} {r[c]:,.0f} ms" if r[c] is not None else f"{h} -" for h, c in zip(HEADERS, COLUMNS, strict=True))
                    + (f"  ERROR {r['error']}" if "error" in r else ""), flush=True)
        errors = [r for r in rows if "error" in r or r["first_answer_ms"] is None or r["first_reasoning_ms"] is None]
        if errors:
            print(f"FAILED: {len(errors)} of {len(rows)} streams came back wrong; no table", file=sys.stderr)
            return 1
        summary = report(args, rows, proxy.startup_s)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2))
        ok = True
        return 0
    except openai.OpenAIError as exc:
        print(f"FAILED: request through the proxy failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if proxy is not None:
            print(proxy.logs()[-3000:], file=sys.stderr)
        return 1
    finally:
        for p in (proxy, up):
            if p is not None:
                stop_tree(p.proc)
        if ok:
            shutil.rmtree(wd, ignore_errors=True)
        else:  # the proxy's and the upstream's logs say why
            print(f"logs kept in {wd}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
