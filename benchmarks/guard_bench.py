"""The full speed benchmark (same as `guardrails-plugin bench`): latency per verdict (full, fast,
cascade), throughput at batch 1 / 8 / 32 / 64 and monitor cost per 1,000 reasoning tokens with and
without KV reuse, each beside its physical floor. Writes bench-results/bench.json and bench.md.

    python benchmarks/guard_bench.py [--shape tiny|llama-1b|llama-3b|qwen3-8b] [--device cpu|cuda] ...
"""

from __future__ import annotations

import sys

from guardrails_plugin.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
