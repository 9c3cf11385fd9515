"""`guardrails-plugin bench`: what a verdict costs, beside the hardware floor (eval/speed.py measures)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import app


@app.command()
def bench(
    shape: Annotated[list[str] | None, typer.Option(
        help="model shape(s): tiny, llama-1b, llama-3b, qwen3-8b; default tiny on CPU, the three real ones on GPU")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available)")] = None,
    input_tokens: Annotated[int | None, typer.Option(help="default 256 on CPU, 1024 on GPU")] = None,
    output_tokens: Annotated[int | None, typer.Option(help="full verdict length; default 32 CPU, 150 GPU")] = None,
    batches: Annotated[str, typer.Option(help="batch sizes, comma-separated")] = "1,8,32,64",
    max_full_batch: Annotated[int | None, typer.Option(help="largest batch for full generation throughput")] = None,
    reps: Annotated[int | None, typer.Option(help="repetitions per figure (default 9 CPU, 20 GPU)")] = None,
    assume_escalation: Annotated[float, typer.Option(help="cascade projection: fraction sent to full generation")] = 0.2,
    monitor_tokens: Annotated[int, typer.Option(help="streamed reasoning tokens in the monitor run")] = 1000,
    monitor_system_tokens: Annotated[int | None, typer.Option(help="guard prompt tokens around the trace")] = None,
    monitor_output_tokens: Annotated[int | None, typer.Option(help="tokens generated per monitor check")] = None,
    check_every: Annotated[int, typer.Option(help="monitor check interval in tokens")] = 64,
    out: Annotated[str, typer.Option(help="folder for bench.json and bench.md")] = "bench-results",
) -> None:
    """Benchmark the engines: latency per verdict (full / fast / cascade), throughput per batch size,
    monitor cost per 1,000 reasoning tokens with and without KV reuse, each beside the hardware floor.
    CPU with a tiny random model, or GPU with real model shapes (random weights: speed only)."""
    from ..eval.speed import BenchOptions, run_and_write

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise typer.BadParameter(f"--batches takes comma-separated integers, got {batches!r}") from None
    options = BenchOptions(
        shape=shape or None, device=device, input_tokens=input_tokens, output_tokens=output_tokens,
        batches=sizes, max_full_batch=max_full_batch, reps=reps, assume_escalation=assume_escalation,
        monitor_tokens=monitor_tokens, monitor_system_tokens=monitor_system_tokens,
        monitor_output_tokens=monitor_output_tokens, check_every=check_every, out=out,
    )
    try:
        options.resolved()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    run_and_write(options)
