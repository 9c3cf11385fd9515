"""`guardrails-plugin check`: one text, one Decision; exit 0 allowed, 1 blocked, 2 usage/config error."""

from __future__ import annotations

from pathlib import Path

import typer

from ..types import Decision, Stage
from .common import (
    BaseUrlOpt,
    ConfigOpt,
    EngineChoice,
    EngineOpt,
    ModelDirOpt,
    ModelOpt,
    ScriptedOpt,
    _fail,
    _handle,
    _out,
    _read_arg,
    app,
    decision_panel,
)
from .guards import build_config, build_guard, diagnose_servers, preflight


@app.command()
def check(
    text: str | None = typer.Argument(None, help="The text to check: the prompt, or with --stage reasoning / "
                                      "response the trace / answer ('-': stdin)."),
    stage: Stage = typer.Option(Stage.PROMPT, "--stage", "-s", case_sensitive=False,
                                help="prompt (default) | reasoning | response"),
    prompt: str = typer.Option("", "--prompt", "--query", "-p", help="User text (the query for reasoning/"
                               "response checks); '-' reads stdin."),
    reasoning: str | None = typer.Option(None, "--reasoning", "-r", help="Chain of thought ('-': stdin)."),
    response: str | None = typer.Option(None, "--response", "-a", help="Model answer ('-': stdin)."),
    json_out: bool = typer.Option(False, "--json", help="Print the Decision as JSON."),
    config: Path | None = ConfigOpt,
    model: str | None = ModelOpt,
    model_dir: Path | None = ModelDirOpt,
    engine: EngineChoice | None = EngineOpt,
    base_url: str | None = BaseUrlOpt,
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="Model name the server serves (vLLM --served-model-name). Default: "
        "the guard's name (GuardReasoner-1B, ReasoningShield-1B), as integrations/vllm/serve_guards.sh serves it."),
    scripted_responses: Path | None = ScriptedOpt,
) -> None:
    """Check one text and print the Decision. Exit 0 allowed, 1 blocked, 2 usage/config error.
    E.g. `guardrails-plugin check --model llama-guard-3-1b "How do I pick a lock?"`."""
    if text is not None:  # the positional text is the judged text of the stage
        slot = {Stage.PROMPT: prompt, Stage.REASONING: reasoning, Stage.RESPONSE: response}[stage]
        if slot:
            raise _fail(f"give the {stage} text once: as TEXT or as its option, not both")
        if stage is Stage.PROMPT:
            prompt = text
        elif stage is Stage.REASONING:
            reasoning = text
        else:
            response = text
    prompt_t, reasoning_t, response_t = _read_arg(prompt) or "", _read_arg(reasoning), _read_arg(response)
    if stage is Stage.PROMPT and not prompt_t:
        raise _fail("--stage prompt needs --prompt TEXT")
    if stage is Stage.REASONING and reasoning_t is None:
        raise _fail("--stage reasoning needs --reasoning TEXT (and usually --query)")
    if stage is Stage.RESPONSE and response_t is None:
        raise _fail("--stage response needs --response TEXT (and usually --prompt)")

    def run() -> Decision:
        cfg = build_config(config, stages=[stage], model=model, model_dir=model_dir, engine=engine,
                           base_url=base_url, served_model_name=served_model_name)
        guard = build_guard(cfg, scripted_responses)
        try:
            preflight(guard, cfg.stage(stage).guards)
            req = guard.request(stage, prompt=prompt_t, reasoning=reasoning_t if stage is Stage.REASONING
                                else None, response=response_t if stage is Stage.RESPONSE else None)
            decision = guard.check(req)
            if decision.failure is not None:
                diagnose_servers(guard, cfg.stage(stage).guards)  # unknown model: exit 2, not a BLOCK
            return decision
        finally:
            guard.close()

    decision: Decision = _handle(run)
    if json_out:
        typer.echo(decision.model_dump_json(indent=2))
    else:
        _out().print(decision_panel(decision))
    raise typer.Exit(1 if decision.blocked else 0)

