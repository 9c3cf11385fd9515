"""Guard work per trace token of a long streamed chain of thought (issue 18).

A ReasoningMonitor is fed one token-sized delta at a time, a check due every ``--every`` tokens,
each check finished before the next delta (a guard faster than the decoder, so no check is
coalesced away and the counts are exact). For 2k / 10k / 40k-token traces it prints:

* checks        checks the monitor ran (end-of-trace check included)
* engine calls  guard windows judged (one generation each; a check's windows go in one batch)
* chars sent    characters of guard prompts sent, in all and per trace character
* per token     the same per trace token (the issue's table)
* wall          seconds for the whole trace

Scripted rows use a counting ScriptedEngine at the shipped budget (24,000 chars, 1,000 overlap).
``--tiny`` adds rows on a tiny random-weight Llama on CPU (TransformersEngine, KV reuse on, one
new token per window, a 4,000-char budget; its random output is read as "safe"): input tokens
sent and prefilled (computed, not served from a kept KV cache) per trace token, and wall time.

    python benchmarks/stream_cost_bench.py                    # scripted rows
    python benchmarks/stream_cost_bench.py --tiny             # plus tiny-model rows
    python benchmarks/stream_cost_bench.py --checkout DIR     # the same, importing DIR/guardrails_plugin

``--checkout`` is how the before/after table is made: ``git archive <rev> guardrails_plugin | tar
-x -C DIR`` and run once with it, once without.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _import_path(argv: list[str]) -> str:
    if "--checkout" in argv:
        return argv[argv.index("--checkout") + 1]
    return str(ROOT)


sys.path.insert(0, _import_path(sys.argv))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import guardrails_plugin  # noqa: E402
from guardrails_plugin import Guard, GuardConfig  # noqa: E402
from guardrails_plugin.config import GuardModelConfig  # noqa: E402
from guardrails_plugin.engines import ScriptedEngine  # noqa: E402

RS = "ReasoningShield-1B"


class Counting(ScriptedEngine):
    """Allows everything in ReasoningShield's format; counts calls and prompt characters."""

    def __init__(self) -> None:
        super().__init__(lambda _: '"Analysis": bench\n"Judgment": 0')
        self.windows = 0  # (ScriptedEngine counts batches in .calls)
        self.chars = 0

    async def generate(self, requests, *, timeout=None):
        out = await super().generate(requests, timeout=timeout)
        self.windows += len(requests)
        self.chars += sum(len(p) for p in self.prompts[-len(requests):])
        self.prompts.clear()  # 40k-token traces: do not keep 100+ MB of prompts
        return out


def config(max_chars: int, overlap: int, **model: object) -> GuardConfig:
    mc = GuardModelConfig(family="reasoningshield", max_input_chars=max_chars, window_overlap_chars=overlap, **model)
    return GuardConfig(models={RS: mc})


def run_trace(guard: Guard, tokens: int, every: int) -> tuple[int, int, float]:
    """Stream ``tokens`` deltas; returns (checks, trace chars, wall seconds)."""
    mon = guard.reasoning_monitor(query="How do I bake bread?", check_every_tokens=every, check_paragraphs=False)
    t0 = time.perf_counter()
    for i in range(tokens):
        mon.feed(f"w{i} ")
        view = mon.check_in_flight
        if view is not None:
            view.result(timeout=600)
    mon.close(timeout=600)
    return mon.stats.checks_run, len(mon.text), time.perf_counter() - t0


def scripted_rows(sizes: list[int], every: int) -> list[dict]:
    rows = []
    for n in sizes:
        engine = Counting()
        guard = Guard(config(24_000, 1_000), engine=engine)
        try:
            checks, chars, wall = run_trace(guard, n, every)
        finally:
            guard.close()
        rows.append({"tokens": n, "checks": checks, "calls": engine.windows, "chars_sent": engine.chars,
                     "per_char": engine.chars / chars, "per_token": engine.chars / n, "wall_s": wall})
    return rows


def tiny_rows(sizes: list[int], every: int) -> list[dict]:
    from guardrails_plugin.engines.transformers import TransformersEngine
    from guardrails_plugin.testing import build_tiny_model

    class ReadAsSafe(TransformersEngine):
        """The real engine's work (prefill with KV reuse, one decoded token per window), its
        random-weight output read as "safe": a tiny model gives no parseable verdict, and only
        real verdicts are remembered."""

        async def generate(self, requests, *, timeout=None):
            await super().generate(requests, timeout=timeout)
            return ['"Analysis": tiny\n"Judgment": 0'] * len(requests)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # room for a 4,000-char window in the tiny tokenizer's tokens plus the guard's template
        path = build_tiny_model(Path(tmp) / "tiny-llama", "llama", max_position_embeddings=16_384)
        for n in sizes:
            engine = ReadAsSafe(str(path), name="tiny")
            guard = Guard(config(4_000, 400, max_new_tokens=1), engine=engine)
            try:
                checks, chars, wall = run_trace(guard, n, every)
            finally:
                guard.close()
            sent = engine.stats["prefill_tokens"] + engine.stats["reused_tokens"]
            rows.append({"tokens": n, "checks": checks, "calls": engine.stats["rows"],
                         "tokens_sent": sent, "prefilled": engine.stats["prefill_tokens"],
                         "sent_per_token": sent / n, "prefilled_per_token": engine.stats["prefill_tokens"] / n,
                         "wall_s": wall})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2_000, 10_000, 40_000], help="trace lengths (tokens)")
    p.add_argument("--every", type=int, default=64, help="tokens per check")
    p.add_argument("--tiny", action="store_true", help="add rows on a tiny Llama (TransformersEngine, CPU)")
    p.add_argument("--tiny-sizes", type=int, nargs="+", default=[2_000, 10_000])
    p.add_argument("--checkout", help="import guardrails_plugin from DIR (before/after runs)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.getLogger("guardrails_plugin").setLevel(logging.ERROR)

    print(f"guardrails_plugin from {Path(guardrails_plugin.__file__).parent.parent}; a check every {args.every} tokens")
    print("\nScripted guard (counting), budget 24,000 chars / 1,000 overlap")
    print("| trace | checks | engine calls | guard prompt chars sent | per trace char | per trace token | wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    scripted = scripted_rows(args.sizes, args.every)
    for r in scripted:
        print(f"| {r['tokens']:,} tokens | {r['checks']:,} | {r['calls']:,} | {r['chars_sent'] / 1e6:.2f} M | "
              f"{r['per_char']:.0f}x | {r['per_token']:.0f} | {r['wall_s']:.1f} |", flush=True)
    if len(scripted) >= 2:
        a, b = scripted[-2], scripted[-1]
        print(f"\nper-token work at {b['tokens']:,} vs {a['tokens']:,} tokens: {b['per_token'] / a['per_token']:.2f}x "
              "(linear: about 1x; the issue's target: within 1.3x)")
    out = {"scripted": scripted}
    if args.tiny:
        print("\nTiny Llama on CPU (TransformersEngine, KV reuse, 1 new token, output read as safe), budget 4,000 chars / 400 overlap")
        print("| trace | checks | windows generated | tokens sent | per trace token | prefilled per trace token | wall s |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        out["tiny"] = tiny_rows(args.tiny_sizes, args.every)
        for r in out["tiny"]:
            print(f"| {r['tokens']:,} tokens | {r['checks']:,} | {r['calls']:,} | {r['tokens_sent'] / 1e6:.2f} M | "
                  f"{r['sent_per_token']:.0f} | {r['prefilled_per_token']:.1f} | {r['wall_s']:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
