"""`guardrails-plugin escalations list | show | resolve | purge | upgrade`: the reviewer's side of
the escalation queue, and the audit store's upkeep.

Mounted on the main app as ``escalations``; ``audit_app`` holds the upkeep commands alone
(``purge``, ``upgrade``) as the ``guardrails-plugin audit`` group; cli/review.py adds ``export``.
The store is ``--db`` (or ``$GUARDRAILS_PLUGIN_AUDIT_DB``, else ./guardrails_audit.db): a SQLite
file, a ``*.jsonl`` path or a ``postgresql://user@host/db`` URL. The CLI never creates a store and
never upgrades one silently (``upgrade`` does that). Exit codes: 0 ok, 1 no such store /
escalation, already resolved, or store unreachable, 2 usage or configuration error.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime, timezone
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import GuardConfigError
from ..observe import (
    STATUSES,
    AuditError,
    AuditStore,
    Escalation,
    EscalationAlreadyResolved,
    EscalationNotFound,
    default_path,
    open_store,
)
from ..observe.reviews import caller_metadata, clean_text, safe_json, trail_of, user_note, visible
from ..review.security import clean_name
from .common import app

escalations_app = typer.Typer(
    name="escalations",
    help="Review the escalation queue: list, show and resolve escalated decisions.",
    no_args_is_help=True,
    add_completion=False,
)

audit_app = typer.Typer(
    name="audit",
    help="Audit store upkeep: purge old records or stored text, upgrade the schema.",
    no_args_is_help=True,
    add_completion=False,
)

app.add_typer(escalations_app, name="escalations")
app.add_typer(audit_app, name="audit")

DbOption = typer.Option(None, "--db", envvar="GUARDRAILS_PLUGIN_AUDIT_DB",
                        help="Audit store: SQLite file, *.jsonl path, or postgresql://user@host:5432/db. "
                        "Default: ./guardrails_audit.db")
JsonOption = typer.Option(False, "--json", help="Machine-readable JSON output.")


def _console() -> Console:
    return Console(soft_wrap=False)


def _err(msg: str, code: int = 1) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False)
    return typer.Exit(code)


def _open(db: str | None, *, migrate: bool = False) -> AuditStore:
    try:
        return open_store(db or default_path(), create=False, migrate=migrate)
    except GuardConfigError as exc:
        raise _err(str(exc), 2) from None
    except AuditError as exc:
        raise _err(str(exc)) from None


def _when(ts: float | None, short: bool = False) -> str:
    if ts is None:
        return "-"
    fmt = "%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%SZ"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime(fmt)


_STATUS_STYLE = {"pending": "yellow", "approved": "green", "rejected": "red"}


def _t(value: Any, style: str = "") -> Text:
    """A table cell shown as written: no Rich markup read from stored text, hidden characters
    (bidi controls, escape sequences, lone surrogates) as ``[U+XXXX]``."""
    return Text(visible(str(value), keep="\n\t"), style=style)


def _status(status: str) -> Text:
    return _t(status, _STATUS_STYLE.get(status, "white"))


@escalations_app.command("list")
def list_cmd(
    status: str = typer.Option("pending", "--status", "-s",
                               help="pending | approved | rejected | all"),
    db: str | None = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """List escalations (pending ones by default)."""
    if status != "all" and status not in STATUSES:
        raise _err(f"--status must be one of {', '.join(STATUSES)}, all; got {status!r}", 2)
    store = _open(db)
    try:
        items = store.list_escalations(None if status == "all" else status)
    except AuditError as exc:
        raise _err(str(exc)) from None
    finally:
        store.close()
    if as_json:
        typer.echo(safe_json([e.to_dict() for e in items], indent=2))
        return
    console = _console()
    if not items:
        console.print(f"no {'' if status == 'all' else status + ' '}escalations in {store.location}")
        return
    table = Table(title=f"Escalations ({status}) - {store.location}", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1))
    table.add_column("ID", justify="right", no_wrap=True)
    for col in ("Time (UTC)", "Stage", "Risk", "Status", "Request"):
        table.add_column(col, no_wrap=True)
    table.add_column("Cat.")
    table.add_column("Reason", overflow="fold", ratio=1)
    for e in items:
        table.add_row(
            str(e.id), _when(e.time, short=True), _t(e.stage), f"{e.risk:.2f}", _status(e.status),
            _t(e.request_id[:6]), _t(", ".join(e.categories) or "-"), _t(e.reason),
        )
    console.print(table)


def _get(store: AuditStore, id: int) -> Escalation:
    esc = store.get_escalation(id)
    if esc is None:
        raise _err(f"no escalation {id} in {store.location}")
    return esc


@escalations_app.command("show")
def show_cmd(
    id: int = typer.Argument(..., help="Escalation id (see `list`)."),
    db: str | None = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """Show one escalation and the audit records of its request."""
    store = _open(db)
    try:
        esc = _get(store, id)
        records = store.records(request_id=esc.request_id)
    except AuditError as exc:
        raise _err(str(exc)) from None
    finally:
        store.close()
    if as_json:
        out: dict[str, Any] = esc.to_dict()
        out["decisions"] = [r.to_dict() for r in records]
        typer.echo(safe_json(out, indent=2))
        return
    console = _console()
    table = Table(title=f"Escalation {esc.id}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows: list[tuple[str, Text]] = [
        ("status", _status(esc.status)),
        ("request id", _t(esc.request_id)), ("time", _t(_when(esc.time))), ("stage", _t(esc.stage)),
        ("risk", _t(f"{esc.risk:.2f}")), ("categories", _t(", ".join(esc.categories) or "-")),
        ("reason", _t(esc.reason)), ("guards", _t(", ".join(esc.guards) or "-")),
        ("content sha256", _t(esc.content_sha256)),
        ("content", _t(esc.content) if esc.content is not None else _t("(not stored)", "dim")),
        ("caller metadata", _t(safe_json(caller_metadata(esc.metadata)) if caller_metadata(esc.metadata) else "-")),
        ("recorded by plugin", _t(safe_json(trail_of(esc.metadata)) if trail_of(esc.metadata) else "-")),
        ("resolver", _t(esc.resolver or "-")), ("note", _t(esc.note or "-")),
        ("resolved at", _t(_when(esc.resolved_at))),
    ]
    for verdict in esc.verdicts:
        label = f"{verdict.get('guard', '?')}: risk {verdict.get('risk', 0):.2f} {verdict.get('label') or ''}"
        if verdict.get("rationale"):
            label = f"{label.strip()} - {verdict['rationale']}"
        rows.append(("verdict", _t(label.strip())))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if records:
        dec = Table(title="Decisions of this request", title_justify="left")
        for col in ("Time (UTC)", "Stage", "Action", "Risk", "Guards", "Latency ms", "Degraded"):
            dec.add_column(col)
        for r in records:
            dec.add_row(_when(r.time), _t(r.stage), _t(r.action), f"{r.risk:.2f}", _t(", ".join(r.guards) or "-"),
                        f"{r.latency_ms:.1f}", "yes" if r.degraded else "no")
        console.print(dec)


@escalations_app.command("resolve")
def resolve_cmd(
    id: int = typer.Argument(..., help="Escalation id (see `list`)."),
    approve: bool = typer.Option(False, "--approve", help="Release: the content was acceptable."),
    reject: bool = typer.Option(False, "--reject", help="Confirm: the content must stay blocked."),
    note: str | None = typer.Option(None, "--note", "-n", help="Reviewer's note."),
    by: str | None = typer.Option(None, "--by", help="Reviewer (default: the OS user)."),
    db: str | None = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """Approve or reject a pending escalation (final: a resolved one cannot be resolved again)."""
    if approve == reject:
        raise _err("give exactly one of --approve / --reject", 2)
    # a command line's bytes that are not UTF-8 arrive as lone surrogates: stored as U+FFFD
    resolver = clean_name(clean_text(by)) or None if by is not None else None
    note = user_note(note)
    if by is not None and resolver is None:
        raise _err("--by needs a printable reviewer name", 2)
    if resolver is None:
        try:
            resolver = getpass.getuser()
        except Exception:  # no user name in some containers
            resolver = "unknown"
    store = _open(db)
    try:
        esc = store.resolve(id, approved=approve, resolver=resolver, note=note)
    except EscalationNotFound:
        raise _err(f"no escalation {id} in {store.location}") from None
    except (EscalationAlreadyResolved, AuditError) as exc:
        raise _err(str(exc)) from None
    finally:
        store.close()
    if as_json:
        typer.echo(safe_json(esc.to_dict(), indent=2))
        return
    line = Text(f"escalation {esc.id}: ")
    line.append_text(_status(esc.status))
    line.append_text(_t(f" by {esc.resolver}" + (f" ({esc.note})" if esc.note else "")))
    _console().print(line)


def _days(value: str | None, flag: str) -> float | None:
    """``30``, ``30d``, ``12h``: a number of days."""
    if value is None:
        return None
    v = value.strip().lower()
    scale = 1 / 24 if v.endswith("h") else 1.0
    try:
        days = float(v.rstrip("dh")) * scale
    except ValueError:
        raise _err(f"{flag} takes days (30, 30d) or hours (12h), got {value!r}", 2) from None
    if days < 0:
        raise _err(f"{flag} must not be negative", 2)
    return days


@escalations_app.command("purge")
@audit_app.command("purge")
def purge_cmd(
    older_than: str | None = typer.Option(None, "--older-than", help="Delete records older than this "
                                          "(days: 90, 90d; hours: 12h). Pending escalations stay."),
    content_older_than: str | None = typer.Option(None, "--content-older-than", help="Erase stored text "
                                                  "older than this; hashes stay."),
    db: str | None = DbOption,
    as_json: bool = JsonOption,
) -> None:
    """Retention: delete old audit records and resolved escalations, or erase old stored text."""
    rec_days, text_days = _days(older_than, "--older-than"), _days(content_older_than, "--content-older-than")
    if rec_days is None and text_days is None:
        raise _err("give --older-than and/or --content-older-than", 2)
    store = _open(db)
    try:
        res = store.purge(older_than_days=rec_days, content_older_than_days=text_days)
    except AuditError as exc:
        raise _err(str(exc)) from None
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(res.to_dict()))
        return
    _console().print(f"{store.location}: {res.records} record(s) and {res.escalations} resolved "
                     f"escalation(s) deleted, stored text erased from {res.content}, "
                     f"{res.kept_pending} old pending escalation(s) kept")


@escalations_app.command("upgrade")
@audit_app.command("upgrade")
def upgrade_cmd(db: str | None = DbOption) -> None:
    """Upgrade the store's schema to this version's (keeps the data). Applications do this
    themselves when they open the store; the other commands never do."""
    store = _open(db, migrate=True)
    try:
        schema = getattr(store, "schema", None)
    finally:
        store.close()
    _console().print(f"{store.location}: schema {schema or 'n/a (JSON lines have none)'}")
