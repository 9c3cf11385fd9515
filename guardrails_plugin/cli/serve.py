"""`guardrails-plugin serve-engine`: the `vllm serve` command for one guard model."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import typer

from .common import _fail, _handle, app


@app.command("serve-engine")
def serve_engine(
    model: str = typer.Argument("yueliu1999/GuardReasoner-1B", help="Hub id, guard name or local folder."),
    port: int = typer.Option(8000, "--port"),
    gpu_memory_utilization: float = typer.Option(0.3, "--gpu-memory-utilization",
                                                 help="Fraction of the whole GPU for this server."),
    max_model_len: int = typer.Option(8192, "--max-model-len"),
    served_model_name: str | None = typer.Option(None, "--served-model-name"),
    extra: list[str] = typer.Option([], "--arg", help="Extra argument passed to vllm (repeatable)."),
    launch: bool = typer.Option(False, "--launch", help="Exec `vllm serve` instead of printing the command."),
) -> None:
    """Print (or --launch) the `vllm serve` command for one guard model."""
    try:
        from ..engines.vllm_launcher import vllm_serve_command
    except ImportError:
        raise _fail("guardrails_plugin.engines.vllm_launcher is not available") from None

    def run() -> list[str]:
        from ..models import get_model_class

        ref = model
        if not Path(model).expanduser().is_dir() and "/" not in model:
            cls = get_model_class(model)  # "GuardReasoner-8B" -> its hub id
            ref = next((h for h in cls.variants.values() if h.rsplit("/", 1)[-1].lower() == model.lower()),
                       cls.default_model_id)
        name = served_model_name or ref.rstrip("/").rsplit("/", 1)[-1]
        return vllm_serve_command(ref, port=port, gpu_memory_utilization=gpu_memory_utilization,
                                  max_model_len=max_model_len, served_model_name=name, extra=extra)

    cmd = _handle(run)
    if not launch:
        typer.echo(shlex.join(cmd))
        return
    if shutil.which(cmd[0]) is None:
        raise _fail(f"{cmd[0]!r} not found on PATH: pip install 'guardrails-plugin[vllm]' on a GPU machine")
    os.execvp(cmd[0], cmd)  # pragma: no cover - replaces this process

