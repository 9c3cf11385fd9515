"""TransformersEngine verdict latency and throughput (batch 1 / 8 / 32 by default), CPU tiny model
by default, real model shapes on a GPU. A thin front of `guardrails-plugin bench` (which also measures
fast scoring, the cascade and monitor KV reuse); all its options apply.

    python benchmarks/engine_bench.py                  # CPU, tiny random model, well under a minute
    python benchmarks/engine_bench.py --shape llama-1b --shape qwen3-8b   # on a GPU
"""

from __future__ import annotations

import sys

from guardrails_plugin.cli import app

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a.startswith("--batches") for a in argv):
        argv = ["--batches", "1,8,32", *argv]
    app(["bench", *argv])
