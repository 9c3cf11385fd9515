"""`guardrails-plugin review serve` (the review page) and `guardrails-plugin escalations export`
(reviewed escalations as labelled data): the ``review`` group on the main app, and ``export`` on
the ``escalations`` group of escalations.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..errors import GuardError
from .common import app
from .escalations import escalations_app
from .guards import load_scripted_engine

review_app = typer.Typer(name="review", help="The review page for escalations (a local web app).",
                         no_args_is_help=True, add_completion=False)

DbOption = typer.Option(None, "--db", envvar="GUARDRAILS_PLUGIN_AUDIT_DB",
                        help="Audit store (SQLite file, *.jsonl, or a database URL). Default: ./guardrails_audit.db")
TOKEN_ENV = "GUARDRAILS_PLUGIN_REVIEW_TOKEN"
SECRET_ENV = "GUARDRAILS_PLUGIN_REVIEW_SECRET"


def _err(msg: str, code: int = 2) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, markup=False)
    return typer.Exit(code)


def _open(db: str | None) -> Any:
    from ..observe import AuditError, default_path, open_store

    try:
        return open_store(db or default_path(), create=False)
    except AuditError as exc:
        raise _err(str(exc), 1) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def review_guard(config: Path, scripted: Path | None = None) -> Any:
    """The Guard that re-checks edits: the config's guards and policy, without its audit and
    notify hooks (the review queue records each re-check in its own store, once)."""
    from ..config import GuardConfig
    from ..guard import Guard

    cfg = GuardConfig.from_yaml(config).model_copy(update={"audit": None, "notify": None})
    engine = load_scripted_engine(scripted) if scripted is not None else None
    return Guard(cfg, engine=engine)


@review_app.command("serve")
def serve_cmd(
    db: str | None = DbOption,
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8765, "--port"),
    token: str | None = typer.Option(None, "--token", envvar=TOKEN_ENV, show_envvar=True,
                                     help="Shared reviewer token (16+ chars); decisions with it are recorded as \"shared token\". "
                                     "Default: a random one, printed at start."),
    reviewer: list[str] = typer.Option([], "--reviewer", help="NAME:TOKEN, one per reviewer (repeatable); "
                                       "the token names the reviewer (prefer these to a shared token)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Guard config: edits are checked "
                                       "again with its guards before release (edits are off without it)."),
    secret_key: str | None = typer.Option(None, "--secret-key", envvar=SECRET_ENV,
                                          help="Signs session cookies and CSRF tokens (default: random per start; sessions end on restart either way)."),
    https_only: bool = typer.Option(False, "--https-only", help="Secure cookies and HSTS (behind a TLS proxy)."),
    scripted_responses: Path | None = typer.Option(None, "--scripted-responses", hidden=True),
) -> None:
    """Serve the review page: pending escalations, their detail, approve / reject / edit."""
    try:
        import uvicorn

        from ..review.app import create_app
        from ..review.security import ReviewAuth
    except ImportError as exc:
        raise _err(f"the review page needs its extra: pip install 'guardrails-plugin[review]' ({exc})") from None
    generated = not token and not reviewer
    if generated:
        token = secrets.token_urlsafe(24)
    try:
        auth = ReviewAuth(token=token or None, reviewers=ReviewAuth.parse_reviewers(reviewer))
        guard = review_guard(config, scripted_responses) if config else None
    except GuardError as exc:
        raise _err(str(exc)) from None
    store = _open(db)
    err = Console(stderr=True, highlight=False)
    if not _is_loopback(host):
        err.print(f"[yellow]warning:[/yellow] serving on {host}, not loopback: put it behind TLS "
                  "(and use --https-only)")
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    err.print(f"review page on {url} (store: {getattr(store, 'path', db)})", markup=False)
    if generated:
        err.print(f"reviewer token: {token}", markup=False)
    if guard is None:
        err.print("edits are off: give --config guard.yaml to re-check edited text", markup=False)
    app = create_app(store, auth=auth, guard=guard, secret_key=secret_key, https_only=https_only)
    try:
        uvicorn.run(app, host=host, port=port, log_level=os.environ.get("GUARDRAILS_PLUGIN_REVIEW_LOG", "warning"),
                    server_header=False)
    finally:
        if guard is not None:
            guard.close()
        store.close()


def export_cmd(
    out: Path = typer.Argument(..., help="Output file (.jsonl, .json, .csv: one stage) or folder "
                               "(one {stage}.jsonl per stage)."),
    stage: str | None = typer.Option(None, "--stage", "-s", help="prompt | reasoning | response"),
    include_edits: bool = typer.Option(False, "--include-edits",
                                       help="Also a row for each released edit, labelled unharmful."),
    db: str | None = DbOption,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Export reviewed escalations as labelled data for eval and calibrate.

    Reject and edit label the content harmful, approve unharmful. Exit 1 when there is nothing
    to export."""
    from ..types import Stage
    from ..review.export import export_reviewed
    from ..review.queue import ReviewError

    if stage is not None and stage not in {s.value for s in Stage}:
        raise _err(f"--stage must be prompt, reasoning or response; got {stage!r}")
    store = _open(db)
    try:
        written, skipped = export_reviewed(store, out, stage=stage, include_edits=include_edits)
    except ReviewError as exc:
        raise _err(str(exc)) from None
    finally:
        store.close()
    summary = {"written": {s: {"path": str(p), "rows": n} for s, (p, n) in written.items()},
               "skipped_without_content": [e.id for e in skipped]}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        for s, (p, n) in written.items():
            typer.echo(f"{s}: {n} labelled row(s) -> {p}")
        if skipped:
            Console(stderr=True).print(f"[yellow]skipped {len(skipped)} reviewed escalation(s) without stored "
                                       "content[/yellow] (audit store_content was off)")
    if not written:
        print("no reviewed escalations with stored content to export", file=sys.stderr)
        raise typer.Exit(1)


app.add_typer(review_app, name="review")
escalations_app.command("export")(export_cmd)

__all__ = ["export_cmd", "review_app", "review_guard"]
