"""What every command shares: the Typer app, consoles, error exits, common options, the decision panel."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..errors import GuardConfigError, GuardError, GuardInputError
from ..types import Action, Decision

app = typer.Typer(
    name="guardrails-plugin",
    help="Local safety-guard models (ReasoningShield, GuardReasoner, FlexGuard) for prompts, "
    "reasoning traces and responses.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class EngineChoice(str, Enum):
    transformers = "transformers"
    openai = "openai"


def _family_enum() -> type[Enum]:
    from ..models import family_names  # the adapter registry: a new family file needs no change here

    return Enum("Family", {n: n for n in family_names()}, type=str)  # type: ignore[return-value]


Family = _family_enum()


def _out() -> Console:
    return Console(soft_wrap=False)


def _err_console(soft_wrap: bool = True) -> Console:
    # soft wrap: long messages (commands to copy) are not broken at the terminal width
    return Console(stderr=True, soft_wrap=soft_wrap)


def _quiet_hf_progress() -> None:
    """transformers' "Loading weights" bars would bury the demo's table."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _fail(msg: str, code: int = 2) -> typer.Exit:
    _err_console().print(Text("error: ", style="bold red") + Text(msg))
    return typer.Exit(code)


def _read_arg(value: str | None) -> str | None:
    """``-`` reads the text from stdin."""
    if value == "-":
        return sys.stdin.read()
    return value


def _shorten(text: str, n: int = 60) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else t[: n - 1] + "…"


def _risk_text(d: Decision) -> str:
    """The decision's risk, or n/a when no guard gave a real verdict (a fail-mode decision)."""
    return f"{d.risk:.2f}" if any(v.ok for v in d.verdicts) else "n/a"


_ACTION_STYLE = {
    Action.ALLOW: "bold green", Action.BLOCK: "bold red", Action.REDACT: "bold yellow",
    Action.ESCALATE: "bold magenta",
}


def decision_panel(d: Decision) -> Panel:
    body = Table.grid(padding=(0, 2))
    body.add_column(style="dim")
    body.add_column()
    body.add_row("stage", str(d.stage))
    body.add_row("reason", d.reason)
    if d.detail:
        body.add_row("detail", _shorten(d.detail, 200))
    body.add_row("risk", _risk_text(d))
    if d.categories:
        body.add_row("categories", ", ".join(d.categories))
    if d.failure:
        body.add_row("failure", str(d.failure) + ("  (degraded: fail-open)" if d.degraded else ""))
    if d.hold:
        body.add_row("hold", "held until reviewed")
    for v in d.verdicts:
        status = "ok" if v.ok else f"FAILED ({v.failure}: {_shorten(v.parse_error or '', 80)})"
        label = f"label={v.label}" if v.label is not None else ""
        body.add_row(
            f"guard {v.guard}",
            f"risk {v.risk:.2f} {label} {status}  {v.latency_ms:.0f} ms"
            + (f"  window {v.window[0]}-{v.window[1]}" if v.window else ""),
        )
    body.add_row("text", _shorten(d.text, 200))
    body.add_row("latency", f"{d.latency_ms:.0f} ms")
    return Panel(body, title=Text(str(d.action).upper(), style=_ACTION_STYLE[d.action]),
                 border_style=_ACTION_STYLE[d.action].split()[-1], expand=False)


ConfigOpt = typer.Option(None, "--config", "-c", help="Guard config YAML (see README).", exists=False)
ModelOpt = typer.Option(None, "--model", "-m", help="Guard model for the stage: a name (GuardReasoner-8B, "
                        "FlexGuard-Qwen3-8B), a hub id, or a local folder.")
ModelDirOpt = typer.Option(None, "--model-dir", help="Local weights: one model folder, or a folder holding "
                           "one folder per guard (GuardReasoner-1B/, ReasoningShield-1B/).")
EngineOpt = typer.Option(None, "--engine", help="transformers (in-process) or openai (a vLLM / SGLang / "
                         "`transformers serve` server).", case_sensitive=False)
BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (with --engine openai).")
ScriptedOpt = typer.Option(None, "--scripted-responses", hidden=True,
                           help="TEST HOOK: JSON file of canned guard completions (ScriptedEngine).")


def _handle(fn: Any) -> Any:
    """Run ``fn``; library errors become a message and exit code 2."""
    try:
        return fn()
    except typer.Exit:
        raise
    except (GuardConfigError, GuardInputError) as exc:
        raise _fail(str(exc)) from None
    except GuardError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None
