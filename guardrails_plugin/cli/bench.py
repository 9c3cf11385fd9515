"""`guardrails-plugin bench`: the engine benchmarks (guardrails_plugin/bench.py)."""

from __future__ import annotations

import typer

from .common import app


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                "help_option_names": []})
def bench(ctx: typer.Context) -> None:
    """Benchmark the engines: latency per verdict (full / fast / cascade), throughput at batch
    1/8/32/64, monitor cost per 1,000 reasoning tokens with and without KV reuse, each beside the
    hardware floor. CPU with a tiny model, or GPU with real model shapes. `bench --help` for options."""
    from ..bench import main as bench_main

    code = bench_main(list(ctx.args))
    if code:
        raise typer.Exit(code)

