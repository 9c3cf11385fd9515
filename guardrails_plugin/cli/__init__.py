"""`guardrails-plugin`: check, demo, eval, calibrate, escalations, bench, serve-engine.

Exit codes (``check``): 0 the content may be shown (ALLOW, REDACT, an ESCALATE that does not hold),
1 blocked (BLOCK or a held ESCALATE), 2 usage or configuration error (bad option, missing weights,
unreadable data). Other commands: 0 success, 1 a target could not be met, 2 usage/config error.

Test hook: ``--scripted-responses FILE`` (hidden from ``--help``, documented in docs/cli.md) runs
every guard on a ScriptedEngine instead of real weights. FILE is JSON: a list of canned completions
(used in turn), or ``{"rules": [{"contains": "bomb", "completion": "..."}], "default": "..."}``
(the first rule whose text occurs in the rendered guard prompt answers). It judges nothing; it
exists so the CLI's plumbing can be tested and demonstrated without a model.

One module per command group: ``check``, ``demo``, ``evaluate`` (eval, calibrate), ``bench``,
``serve`` (serve-engine), ``escalations`` (the queue and the ``audit`` upkeep group), ``review``
(review serve, escalations export). ``common`` holds the Typer app and shared options, ``guards``
builds the config and Guard.
"""

from __future__ import annotations

import typer

# Importing a command module registers its commands on ``app``; --help lists them in this order.
# isort: off
from . import check, demo, evaluate, bench, serve, escalations, review  # noqa: F401
# isort: on
from .common import EngineChoice, Family, app, decision_panel
from .guards import (
    WEIGHTS_HINT,
    apply_model_dir,
    build_config,
    build_guard,
    diagnose_servers,
    load_scripted_engine,
    preflight,
)

__all__ = [
    "WEIGHTS_HINT",
    "EngineChoice",
    "Family",
    "app",
    "apply_model_dir",
    "build_config",
    "build_guard",
    "decision_panel",
    "diagnose_servers",
    "load_scripted_engine",
    "main",
    "preflight",
]


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"guardrails-plugin {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Local safety-guard models for prompts, reasoning traces and responses."""


def main() -> None:  # `python -m guardrails_plugin.cli` (__main__.py)
    app()
