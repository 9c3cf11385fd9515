# ruff: noqa: F401, F811 - pytest fixtures imported from audit_support / pg_support are parameters here
"""Audit trail and escalation queue, the same behaviour on every store: SQLite, PostgreSQL (a real
server, tests/pg_support.py) and JSON lines. Records, privacy, escalations and their review,
durability settings, configuration errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from audit_support import HARM, backend, make_guard, sha
from pg_support import pg_server
from pydantic import ValidationError
from sqlalchemy import event

from guardrails_plugin import Action, Guard, GuardConfig, GuardConfigError, Stage
from guardrails_plugin.audit import (
    AuditError,
    AuditUnavailable,
    EscalationAlreadyResolved,
    EscalationNotFound,
    JsonlAuditStore,
    SqlAuditStore,
    attach_audit,
    open_store,
)
from guardrails_plugin.engines import ScriptedEngine

pytestmark = pytest.mark.timeout(120)


# -- records --------------------------------------------------------------------------------
def test_records_have_the_decision_fields_and_hash(backend: str) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict")
    allow = guard.check_prompt("hello world")
    block = guard.check_prompt("how do I build a bomb")
    esc = guard.check_reasoning(query="q", reasoning="let me think about it")
    assert (allow.action, block.action, esc.action) == (Action.ALLOW, Action.BLOCK, Action.ESCALATE)

    store = auditor.store
    recs = {r.request_id: r for r in store.records()}
    assert list(recs) == [allow.request_id, block.request_id, esc.request_id]  # oldest first
    for d, text in ((allow, "hello world"), (block, "how do I build a bomb"), (esc, "let me think about it")):
        r = recs[d.request_id]
        assert (r.stage, r.action, r.reason) == (d.stage.value, d.action.value, d.reason)
        assert r.risk == pytest.approx(d.risk) and r.latency_ms == pytest.approx(d.latency_ms)
        assert r.degraded is False and r.failure is None and r.hold is False
        assert r.content_sha256 == sha(text)
        assert r.content is None  # privacy default
        assert r.guards == [v.guard for v in d.verdicts] and set(r.guard_latency_ms) == set(r.guards)
        assert [v["risk"] for v in r.verdicts] == [v.risk for v in d.verdicts]
        # guard outputs quote the content: not stored without store_content
        assert all("raw_output" not in v and "rationale" not in v for v in r.verdicts)
        assert text not in json.dumps(r.to_dict())
        assert r.record_id
    assert store.records(action="block")[0].request_id == block.request_id
    assert [r.request_id for r in store.records(limit=2)] == [allow.request_id, block.request_id]
    assert store.records(request_id="nope") == []
    (e,) = store.list_escalations()  # only the ESCALATE decision is queued
    assert e.request_id == esc.request_id
    auditor.close()


def test_content_is_stored_only_when_configured(backend: str) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict", store_content=True)
    d = guard.check_prompt("how do I build a bomb")
    e = guard.check_reasoning(query="q", reasoning="some thought")
    (r,) = auditor.store.records(request_id=d.request_id)
    assert r.content == "how do I build a bomb"
    assert r.verdicts[0]["raw_output"] == HARM
    (esc,) = auditor.list_escalations()
    assert esc.request_id == e.request_id and esc.content == "some thought"
    assert esc.verdicts[0]["rationale"]  # the guard's analysis, for the reviewer
    auditor.close()


def test_text_postgres_would_refuse_round_trips_exactly(backend: str) -> None:
    # NUL is refused by PostgreSQL text and jsonb; judged text is a JSON string, so it is kept
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict", store_content=True)
    text = "nul\x00 byte, emoji \U0001f600, \\u0000 literal, 'quotes' \"and\" ; DROP TABLE decisions;--"
    d = guard.check(guard.request(Stage.PROMPT, prompt=text, metadata={"k\x00": "v\x00"}))
    (r,) = auditor.store.records(request_id=d.request_id)
    assert r.content == text and r.content_sha256 == sha(text)
    assert r.metadata["k\x00"] == "v\x00"
    auditor.close()


def test_failures_and_degraded_are_recorded(backend: str, tmp_path: Path) -> None:
    def down(_: str) -> str:
        raise ConnectionError("engine down")

    guard = Guard(GuardConfig(stages={"response": {"guards": ["GuardReasoner-1B"], "fail_mode": "open"}}),
                  engine=ScriptedEngine(down))
    auditor = attach_audit(guard, path=backend, durability="strict")
    closed = guard.check_prompt("anything")
    opened = guard.check_response(prompt="q", response="anything")
    assert (closed.action, opened.action) == (Action.BLOCK, Action.ALLOW)
    recs = {r.request_id: r for r in auditor.store.records()}
    for d, degraded in ((closed, False), (opened, True)):
        r = recs[d.request_id]
        assert r.failure == "engine_error" and r.degraded is degraded and r.reason == d.reason
        assert r.verdicts[0]["failure"] == "engine_error" and r.detail == d.detail
    auditor.close()


def test_metadata_is_copied_even_when_json_cannot_hold_it(backend: str) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict")
    loop: dict[str, object] = {"name": "x"}
    loop["self"] = loop  # circular: json.dumps raises even with default=str
    d = guard.check(guard.request(Stage.PROMPT, prompt="hi", metadata={"user": "u1", "obj": object()}))
    d2 = guard.check(guard.request(Stage.PROMPT, prompt="hi", metadata={"user": "u2", "loop": loop}))
    r = auditor.store.records(request_id=d.request_id)[0]
    assert r.metadata["user"] == "u1" and r.metadata["obj"].startswith("<object")
    r2 = auditor.store.records(request_id=d2.request_id)[0]
    assert r2.metadata["user"] == "u2" and isinstance(r2.metadata["loop"], str)
    auditor.close()


# -- escalation lifecycle ---------------------------------------------------------------------
def test_escalation_lifecycle(backend: str) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict")
    guard.check_prompt("fine")
    guard.check_prompt("a bomb")
    e1 = guard.check(guard.request(Stage.REASONING, prompt="q1", reasoning="thought one",
                                   metadata={"user": "u1", "model": "m"}))
    e2 = guard.check_reasoning(query="q2", reasoning="thought two")
    store = auditor.store
    pending = store.list_escalations("pending")
    assert [p.request_id for p in pending] == [e1.request_id, e2.request_id]
    first = pending[0]
    assert first.status == "pending" and first.stage == "reasoning" and first.pending
    assert first.risk == pytest.approx(0.5) and first.content_sha256 == sha("thought one")
    assert first.content is None and first.resolver is None and first.resolved_at is None
    # rich enough for a review page: the guards' verdicts and the request's context
    assert first.guards == ["ReasoningShield-1B"] and first.verdicts[0]["risk"] == pytest.approx(0.5)
    assert first.metadata == {"user": "u1", "model": "m"} and first.created_at == first.time
    assert first.to_dict()["created_at"] == first.time and first.reason == e1.reason

    done = store.resolve(first.id, approved=True, resolver="alice", note="benign")
    assert (done.status, done.resolver, done.note) == ("approved", "alice", "benign")
    assert done.resolved_at is not None and done.resolved_at >= done.time
    assert store.get_escalation(first.id) == done
    assert [p.id for p in store.list_escalations("pending")] == [pending[1].id]
    assert [p.id for p in store.list_escalations("approved")] == [first.id]
    assert store.list_escalations("rejected") == []
    assert len(store.list_escalations()) == 2
    with pytest.raises(EscalationAlreadyResolved, match="already approved by alice"):
        store.resolve(first.id, approved=False, resolver="mallory")
    assert store.get_escalation(first.id).status == "approved"  # type: ignore[union-attr]
    with pytest.raises(EscalationNotFound):
        store.resolve(999, approved=True)
    assert store.get_escalation(999) is None
    with pytest.raises(ValueError):
        store.list_escalations("maybe")
    auditor.close()


def test_concurrent_resolves_one_wins(backend: str) -> None:
    guard = make_guard()
    auditor = attach_audit(guard, path=backend, durability="strict")
    guard.check_reasoning(query="q", reasoning="grey")
    (esc,) = auditor.list_escalations()
    stores = [open_store(backend) for _ in range(4)]  # four independent connections / pools
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def resolve(i: int) -> None:
        barrier.wait()
        try:
            stores[i].resolve(esc.id, approved=i % 2 == 0, resolver=f"r{i}")
            outcomes.append("ok")
        except EscalationAlreadyResolved:
            outcomes.append("already")

    threads = [threading.Thread(target=resolve, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["already"] * 3 + ["ok"]
    final = auditor.store.get_escalation(esc.id)
    assert final is not None and final.resolver in {f"r{i}" for i in range(4)}
    for s in stores:
        s.close()
    auditor.close()


# -- durability settings (a test that fails if a commit were not synchronous) ----------------
def _spy_sync_setting(store: SqlAuditStore) -> list[str]:
    """What the database's sync setting was inside each decision insert's transaction."""
    seen: list[str] = []
    query = "PRAGMA synchronous" if store.dialect == "sqlite" else "SHOW synchronous_commit"

    @event.listens_for(store.engine, "before_cursor_execute")
    def spy(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO DECISIONS"):
            seen.append(str(cursor.connection.execute(query).fetchone()[0]))

    return seen


def test_strict_commits_are_synchronous_background_ones_batch(backend: str) -> None:
    guard = make_guard()
    strict = attach_audit(guard, path=backend, durability="strict")
    seen = _spy_sync_setting(strict.store)  # type: ignore[arg-type]
    guard.check_prompt("one")
    guard.check_prompt("two")
    guard.hooks.remove(strict)
    bg = attach_audit(guard, path=backend, durability="background")
    bg_seen = _spy_sync_setting(bg.store)  # type: ignore[arg-type]
    for i in range(5):
        guard.check_prompt(f"bg {i}")
    assert bg.flush(30)
    # SQLite batches: NORMAL (survives a killed process); PostgreSQL: always synchronous
    full, relaxed = ("2", "1") if strict.store.dialect == "sqlite" else ("on", "on")  # type: ignore[attr-defined]
    assert seen == [full, full]  # FULL: the WAL is fsync'd before COMMIT returns
    assert bg_seen and set(bg_seen) == {relaxed}
    if strict.store.dialect == "sqlite":  # type: ignore[attr-defined]
        with strict.store.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert strict.store.count() == 7  # type: ignore[attr-defined]
    strict.close()
    bg.close()


def test_sqlite_layout_and_no_text_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    guard = make_guard()
    auditor = attach_audit(guard, path=db, durability="strict")
    guard.check_prompt("how do I build a bomb")
    guard.check_prompt("hello world")
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("audit.db"))
    assert b"bomb" not in on_disk and b"hello world" not in on_disk  # main file and WAL
    assert sha("hello world").encode() in on_disk
    with auditor.store.engine.connect() as conn:  # type: ignore[attr-defined]
        idx = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"ix_decisions_request_id", "ix_decisions_time", "ix_decisions_action"} <= idx
    auditor.close()


# -- configuration ----------------------------------------------------------------------------
def test_guard_config_audit_attaches_and_close_drains(backend: str) -> None:
    guard = make_guard(audit={"path": backend, "store_content": True})
    assert guard.auditor is not None and guard.auditor in guard.hooks
    assert guard.auditor.durability == "background"
    ids = [guard.check_prompt(f"t{i}").request_id for i in range(10)]
    guard.close()
    fresh = open_store(backend, create=False)
    assert [r.request_id for r in fresh.records()] == ids
    assert fresh.records()[0].content == "t0"
    fresh.close()


def test_guard_config_audit_rejects_bad_settings(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    for bad in ({"path": db, "durabilty": "strict"}, {"path": db, "durability": "eventually"},
                {"path": db, "sink": "postgres"}, {"path": db, "retention_days": -1}):
        with pytest.raises(GuardConfigError):
            GuardConfig.build(audit=bad)
        with pytest.raises(ValidationError):
            GuardConfig(audit=bad)


@pytest.mark.parametrize("path", [
    "postgresql:/localhost/db",  # a typo'd URL: once a local directory named 'postgresql:'
    "postgresql:localhost",
    "mysql://u@h/db",
    "s3://bucket/audit.db",
    "sqlite://",  # in-memory: no audit trail
    "sqlite:///:memory:",
    "postgresql+asyncpg://u@h/db",
    "postgresql://u@h:5432",  # no database
])
def test_unusable_paths_are_configuration_errors(path: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GuardConfigError):
        open_store(path)
    with pytest.raises(GuardConfigError):
        make_guard(audit={"path": path})
    assert list(tmp_path.iterdir()) == []  # nothing was created on the way


def test_a_directory_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(GuardConfigError, match="directory"):
        open_store(tmp_path)


def test_url_forms_and_masked_password(pg_server, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    url = pg_server.create_db()
    store = open_store(url.replace("postgresql://", "postgres://"))  # libpq's alias works too
    assert store.location.startswith("postgresql+psycopg://postgres@127.0.0.1")
    store.close()
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///rel.db")
    assert (tmp_path / "rel.db").exists() and store.location == "rel.db"
    store.close()
    secret = url.replace("postgres@", "postgres:hunter2@")
    store = open_store(secret)  # trust auth ignores the password; it must never be printed
    assert "hunter2" not in store.location and "hunter2" not in repr(store)
    store.close()


def test_unreachable_postgres_is_a_clear_error() -> None:
    from fake_openai_server import free_port

    with pytest.raises(AuditUnavailable, match="cannot open audit store"):
        open_store(f"postgresql://nobody@127.0.0.1:{free_port()}/audit", connect_timeout_s=2)
    with pytest.raises(AuditError):  # the CLI's case: a store must exist
        open_store("/nonexistent/dir/audit.db", create=False)


# -- JSON lines -------------------------------------------------------------------------------
def test_jsonl_sink_records_and_escalations(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    guard = make_guard()
    auditor = attach_audit(guard, path=path, durability="strict")  # sink inferred from .jsonl
    assert isinstance(auditor.store, JsonlAuditStore)
    a = guard.check_prompt("hello")
    e = guard.check_reasoning(query="q", reasoning="hmm")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["request_id"] for x in lines] == [a.request_id, e.request_id]
    assert lines[0]["content_sha256"] == sha("hello") and lines[0]["content"] is None
    assert lines[1]["action"] == "escalate"

    (esc,) = auditor.list_escalations("pending")
    assert esc.request_id == e.request_id and esc.guards == ["ReasoningShield-1B"]
    done = auditor.resolve(esc.id, approved=False, resolver="bob", note="no")
    assert done.status == "rejected"
    with pytest.raises(EscalationAlreadyResolved):
        auditor.resolve(esc.id, approved=True, resolver="eve")
    # a second process's view (a fresh store on the same files) folds the same state
    other = JsonlAuditStore(path, create=False)
    assert other.get_escalation(esc.id).status == "rejected"  # type: ignore[union-attr]
    assert other.list_escalations("pending") == []

    # a torn last line (killed mid-write) is skipped and the next record starts on its own line
    with open(path, "ab") as fh:
        fh.write(b'{"request_id": "torn", "ti')
    b = guard.check_prompt("after the tear")
    assert [r.request_id for r in other.records()] == [a.request_id, e.request_id, b.request_id]
    other.close()
    auditor.close()
