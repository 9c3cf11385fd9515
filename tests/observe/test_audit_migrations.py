# ruff: noqa: F401, F811 - pytest fixtures imported from audit_support / pg_support are parameters here
"""Schema versions: a store made by the previous release (the v1 SQLite schema, DDL copied from
that release's audit.py) is upgraded in place with its data kept, on SQLite and on PostgreSQL;
a newer or foreign schema is refused; many processes opening a new store at once agree."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from audit_support import REPO, backend, child_env, make_guard
from pg_support import pg_server
from typer.testing import CliRunner

from guardrails_plugin.audit import AuditError, EscalationAlreadyResolved, attach_audit, open_store
from guardrails_plugin.cli.escalations import escalations_app

pytestmark = pytest.mark.timeout(180)

# The previous release's schema, verbatim (guardrails_plugin/audit.py before schema versions).
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id       TEXT    NOT NULL,
    time             REAL    NOT NULL,
    stage            TEXT    NOT NULL,
    guards           TEXT    NOT NULL,  -- JSON list of guard model names
    action           TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    risk             REAL    NOT NULL,
    categories       TEXT    NOT NULL,  -- JSON list
    verdicts         TEXT    NOT NULL,  -- JSON list of Verdict dicts
    latency_ms       REAL    NOT NULL,
    guard_latency_ms TEXT    NOT NULL,  -- JSON {guard: ms}
    degraded         INTEGER NOT NULL,
    failure          TEXT,
    hold             INTEGER NOT NULL,
    content_sha256   TEXT    NOT NULL,
    content          TEXT,              -- only with store_content=True
    unguarded        TEXT    NOT NULL,  -- JSON list
    metadata         TEXT    NOT NULL   -- JSON object
);
CREATE INDEX IF NOT EXISTS ix_decisions_request_id ON decisions(request_id);
CREATE INDEX IF NOT EXISTS ix_decisions_time ON decisions(time);
CREATE INDEX IF NOT EXISTS ix_decisions_action ON decisions(action);
CREATE TABLE IF NOT EXISTS escalations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id     TEXT    NOT NULL,
    time           REAL    NOT NULL,
    stage          TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    risk           REAL    NOT NULL,
    categories     TEXT    NOT NULL,
    content_sha256 TEXT    NOT NULL,
    content        TEXT,
    status         TEXT    NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'approved', 'rejected')),
    resolver       TEXT,
    note           TEXT,
    resolved_at    REAL
);
CREATE INDEX IF NOT EXISTS ix_escalations_status ON escalations(status, id);
CREATE INDEX IF NOT EXISTS ix_escalations_request_id ON escalations(request_id);
"""

VERDICT = {"guard": "ReasoningShield-1B", "stage": "reasoning", "risk": 0.5, "label": "0.5",
           "raw_output": '"Judgment": 0.5', "rationale": "borderline", "parse_ok": True}
# (request_id, time, action, content, escalation status, resolver, note, resolved_at)
ROWS = [
    ("r-allow", 1000.0, "allow", None, None, None, None, None),
    ("r-approved", 1001.0, "escalate", "secret text ü \x01", "approved", "alice", "fine", 1500.0),
    ("r-pending", 1002.0, "escalate", None, "pending", None, None, None),
    ("r-rejected", 1003.0, "escalate", "it's \"quoted\"", "rejected", "bob", None, 1600.0),
]


def write_v1_rows(conn: sa.Connection) -> None:
    for rid, t, action, content, status, resolver, note, resolved_at in ROWS:
        verdicts = [VERDICT if content is not None else {k: v for k, v in VERDICT.items()
                                                         if k not in ("raw_output", "rationale")}]
        conn.execute(sa.text(
            "INSERT INTO decisions (request_id, time, stage, guards, action, reason, risk, categories,"
            " verdicts, latency_ms, guard_latency_ms, degraded, failure, hold, content_sha256, content,"
            " unguarded, metadata) VALUES (:rid, :t, 'reasoning', :guards, :action, 'risk 0.50', 0.5,"
            " '[\"S1\"]', :verdicts, 12.5, :glat, 0, NULL, :hold, :sha, :content, '[]', :meta)"),
            {"rid": rid, "t": t, "guards": json.dumps(["ReasoningShield-1B"]), "action": action,
             "verdicts": json.dumps(verdicts), "glat": json.dumps({"ReasoningShield-1B": 12.5}),
             "hold": int(action == "escalate"), "sha": "h-" + rid, "content": content,
             "meta": json.dumps({"user": rid})})
        if status is not None:
            conn.execute(sa.text(
                "INSERT INTO escalations (request_id, time, stage, reason, risk, categories,"
                " content_sha256, content, status, resolver, note, resolved_at) VALUES (:rid, :t,"
                " 'reasoning', 'risk 0.50', 0.5, '[\"S1\"]', :sha, :content, :status, :resolver, :note, :ra)"),
                {"rid": rid, "t": t, "sha": "h-" + rid, "content": content, "status": status,
                 "resolver": resolver, "note": note, "ra": resolved_at})


def make_v1_store(target: str, tmp_path: Path) -> str:
    """A store in the previous release's state; returns what open_store takes."""
    if not target.startswith("postgresql://"):
        raw = sqlite3.connect(target)  # exactly what the previous release ran
        raw.execute("PRAGMA journal_mode=WAL")
        raw.executescript(V1_SCHEMA + "PRAGMA user_version=1;")
        raw.close()
        engine = sa.create_engine(f"sqlite:///{target}")
    else:  # the previous release had no PostgreSQL store: revision 0001 is that schema there
        from alembic import command

        from guardrails_plugin.observe.migrate import _alembic_config

        engine = sa.create_engine(target.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0001")  # type: ignore[arg-type]
    with engine.begin() as conn:
        write_v1_rows(conn)
    engine.dispose()
    return target


def test_upgrade_from_the_previous_schema_keeps_the_data(backend: str, tmp_path: Path) -> None:
    make_v1_store(backend, tmp_path)
    with pytest.raises(AuditError, match="upgrade"):  # readers never migrate behind an app's back
        open_store(backend, create=False, migrate=False)
    r = CliRunner().invoke(escalations_app, ["list", "--db", backend])
    assert r.exit_code == 1 and "upgrade" in r.output
    r = CliRunner().invoke(escalations_app, ["upgrade", "--db", backend])
    assert r.exit_code == 0 and "0002" in r.output, r.output

    store = open_store(backend, create=False)
    assert store.schema == "0002"  # type: ignore[attr-defined]
    recs = {r.request_id: r for r in store.records()}
    assert list(recs) == [row[0] for row in ROWS]
    for rid, t, action, content, *_ in ROWS:
        r = recs[rid]
        assert (r.time, r.action, r.content, r.content_sha256) == (t, action, content, "h-" + rid)
        assert r.guards == ["ReasoningShield-1B"] and r.categories == ["S1"] and r.metadata == {"user": rid}
        assert r.degraded is False and r.hold is (action == "escalate")
        assert r.guard_latency_ms == {"ReasoningShield-1B": 12.5} and r.notes == [] and r.record_id is None
        assert ("raw_output" in r.verdicts[0]) is (content is not None)
    escs = {e.request_id: e for e in store.list_escalations()}
    for rid, _, _, content, status, resolver, note, resolved_at in ROWS[1:]:
        e = escs[rid]
        assert (e.status, e.resolver, e.note, e.resolved_at, e.content) == (status, resolver, note, resolved_at,
                                                                             content)
        assert e.guards == ["ReasoningShield-1B"] and e.metadata == {"user": rid} and e.hold is True
        assert e.verdicts[0]["risk"] == 0.5  # copied from its decision
    assert [e.request_id for e in store.list_escalations("pending")] == ["r-pending"]
    with pytest.raises(EscalationAlreadyResolved, match="alice"):  # old reviews are final too
        store.resolve(escs["r-approved"].id, approved=False)
    assert store.resolve(escs["r-pending"].id, approved=True, resolver="carol").status == "approved"
    assert store.integrity_check() == "ok"
    # the migrated rows take part in retention like new ones: text erased, hashes kept
    res = store.purge(content_older_than_days=0)
    assert res.content == 4  # two decisions, two escalations
    r = store.records(request_id="r-approved")[0]
    assert r.content is None and r.content_sha256 == "h-r-approved" and "raw_output" not in r.verdicts[0]
    store.close()

    # an application writes on after the upgrade; ids go on from the old ones
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict")
    d = guard.check_reasoning(query="q", reasoning="new grey thought")
    esc = auditor.list_escalations()
    assert esc[-1].request_id == d.request_id and esc[-1].id == max(e.id for e in escs.values()) + 1
    assert esc[-1].record_id is not None
    auditor.close()


def test_a_newer_schema_is_refused(backend: str) -> None:
    open_store(backend).close()
    engine = sa.create_engine(backend.replace("postgresql://", "postgresql+psycopg://")
                              if backend.startswith("postgresql://") else f"sqlite:///{backend}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE guardrails_audit_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(AuditError, match="newer than this version"):
        open_store(backend)


def test_a_foreign_decisions_table_is_not_taken_over(backend: str) -> None:
    engine = sa.create_engine(backend.replace("postgresql://", "postgresql+psycopg://")
                              if backend.startswith("postgresql://") else f"sqlite:///{backend}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE decisions (id INTEGER PRIMARY KEY, verdict TEXT)"))
    engine.dispose()
    with pytest.raises(AuditError, match="not a guardrails-plugin audit store"):
        open_store(backend)


OPENER = textwrap.dedent(
    """
    import sys
    from guardrails_plugin.audit import open_store
    s = open_store(sys.argv[1])
    print(s.schema)
    s.close()
    """
)


def test_many_processes_creating_one_store_agree(backend: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, backend], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=child_env(), cwd=str(REPO))
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["0002"] * 4
    engine = sa.create_engine(backend.replace("postgresql://", "postgresql+psycopg://")
                              if backend.startswith("postgresql://") else f"sqlite:///{backend}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM guardrails_audit_version")).scalar() == 1
    engine.dispose()
